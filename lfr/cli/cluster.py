"""``lfr node`` (one node of a deployment spread over machines), ``lfr status`` and ``lfr alerts``
(what the deployment's NATS server holds of it)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from lfr.cli.output import EXIT_FAILED, EXIT_OK, UserError, print_json, stderr
from lfr.cli.plugins import load_registry
from lfr.textsafe import safe_text


def _credentials(args: argparse.Namespace, deployment: str, user: str) -> Any:
    """``--credentials``, else this user's in lfr's key directory, else None."""
    from lfr.cluster.credentials import CredentialsError, find_credentials

    explicit = getattr(args, "credentials", None)
    try:
        return find_credentials(deployment, user, Path(explicit) if explicit else None)
    except CredentialsError as exc:
        raise UserError(str(exc)) from None


def _deployment_key(args: argparse.Namespace, config: Any, node: str) -> Any:
    """``config`` with the deployment's data key (lfr.cluster.credentials.with_deployment_key)."""
    from lfr.cluster.credentials import CredentialsError, credentials_file, with_deployment_key

    explicit = getattr(args, "credentials", None)
    try:
        return with_deployment_key(config, credentials_file(
            config.name, node, Path(explicit) if explicit else None))
    except CredentialsError as exc:
        raise UserError(str(exc)) from None


def cmd_nats_config(args: argparse.Namespace) -> int:
    from lfr.cluster.bus import BusError
    from lfr.cluster.credentials import CredentialsError, generate
    from lfr.config import parse_listen
    from lfr.keys import KeyFileError, load_data_key

    try:
        parse_listen(args.listen, "--listen")
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ValueError("--tls-cert and --tls-key: give both or neither")
        tls = (Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
        # The key the deployment's bundles are sealed with: it goes to every node.
        data_key = load_data_key(Path(args.data_key) if args.data_key else None)
        written, key_file = generate(
            args.deployment, args.node, args.console, args.listen, Path(args.store).resolve(),
            Path(args.output), Path(args.credentials_dir) if args.credentials_dir else None,
            tls=tls, ca_file=Path(args.tls_ca) if args.tls_ca else None, data_key=data_key)
    except (ValueError, BusError, CredentialsError, KeyFileError) as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"server_config": str(Path(args.output).resolve()),
                    "credentials": [str(p) for p in written], "data_key": str(key_file),
                    "data_key_id": data_key.fingerprint})
    else:
        stderr.print(f"wrote {args.output} (start: nats-server -c {args.output}) and "
                     f"credentials for {len(written)} users:", highlight=False)
        for path in written:
            stderr.print(f"  {path}", highlight=False)
        stderr.print(f"and the deployment's data key {key_file} (key {data_key.fingerprint}): "
                     "copy it to each node with the node's credentials", highlight=False)
    return EXIT_OK


def _bus_error(exc: Exception, url: str) -> UserError:
    return UserError(f"NATS at {url}: {exc or type(exc).__name__}")


def cmd_node(args: argparse.Namespace) -> int:
    from lfr.cluster.bus import BusError
    from lfr.cluster.node import run_node
    from lfr.config import load_config
    from lfr.pipeline.wiring import build_analyzer

    # Nodes never build a bundle (two nodes building one folder would race): they load the
    # deployment's published one, or publish the config's [watchlist] bundle when none is.
    config = load_config(Path(args.config))
    name = args.node or socket.gethostname().split(".")[0]
    # Credentials and the deployment's data key first: a node not provisioned stops before
    # loading its models.
    credentials = _credentials(args, config.name, name)
    config = _deployment_key(args, config, name)
    registry = load_registry()
    analyzer = build_analyzer(config, registry)
    try:
        summaries = run_node(config, args.nats, name, registry, analyzer, credentials)
    except BusError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # no server there, refused: named; anything else is a bug
        if type(exc).__module__.startswith("nats") or isinstance(exc, OSError):
            raise _bus_error(exc, args.nats) from None
        raise
    failures = [f for s in summaries for f in s.failures]
    if args.json:
        print_json({"node": name, "runs": len(summaries),
                    "frames": sum(s.frames for s in summaries),
                    "alerts": sum(s.alerts for s in summaries), "failures": failures})
    else:
        stderr.print(f"node {name}: {len(summaries)} runs, "
                     f"{sum(s.alerts for s in summaries)} alerts")
    return EXIT_FAILED if failures else EXIT_OK


def _read(args: argparse.Namespace, what: str) -> dict[str, Any]:
    from lfr.cluster import status
    from lfr.cluster.bus import BusError

    credentials = _credentials(args, args.deployment, "console")
    try:
        result: dict[str, Any] = getattr(status, what)(args.nats, args.deployment, credentials)
    except BusError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # no server there, refused, timed out
        if type(exc).__module__.startswith("nats") or isinstance(exc, OSError):
            raise _bus_error(exc, args.nats) from None
        raise
    return result


def cmd_status(args: argparse.Namespace) -> int:
    result = _read(args, "status")
    if args.json:
        print_json(result)
        return EXIT_OK
    nodes = Table(title=f"deployment {result['deployment']}: nodes", title_justify="left")
    for column in ("node", "alive", "cameras", "last seen", "unpublished"):
        nodes.add_column(column)
    for node in result["nodes"]:
        nodes.add_row(safe_text(node["name"]), "yes" if node["alive"] else "no",
                      safe_text(", ".join(node["cameras"])), node["last_seen"],
                      str(node["unpublished"]))
    cameras = Table(title="cameras", title_justify="left")
    for column in ("camera", "node", "state"):
        cameras.add_column(column)
    for camera in result["cameras"]:
        cameras.add_row(safe_text(camera["name"]), safe_text(camera["node"] or "-"),
                        camera["state"])
    stderr.print(nodes)
    stderr.print(cameras)
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    result = _read(args, "alerts")
    if args.json:
        print_json(result)
        return EXIT_OK
    table = Table(title=f"{len(result['alerts'])} alerts ({result['stream_records']} records, "
                  f"{result['duplicates']} duplicates)", title_justify="left")
    for column in ("time", "node", "camera", "person", "score", "decision", "sightings"):
        table.add_column(column)
    for a in result["alerts"]:
        seen_on = sorted({f"{s['node']}/{s['camera']}" for s in a["sightings"]})
        table.add_row(a["time"], safe_text(a["node"]), safe_text(a["camera"]),
                      safe_text(f"{a['name']} ({a['person_id']})"), f"{a['score']:.3f}",
                      a["decision"] or "-",
                      safe_text(f"{len(a['sightings'])} ({', '.join(seen_on)})")
                      if a["sightings"] else "-")
    stderr.print(table)
    return EXIT_OK


def cmd_watchlist_publish(args: argparse.Namespace) -> int:
    from lfr.cluster.watchlist import WatchlistError

    credentials = _credentials(args, args.deployment, "console")
    key_id = credentials.data_key_id if credentials is not None else ""
    try:
        version = _on_bus(args, _publish(Path(args.bundle), args.operator, key_id))
    except WatchlistError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print_json({"published": version})
    else:
        stderr.print(f"published {args.bundle} as watchlist version {version['version']} of "
                     f"{args.deployment} (sha256 {version['sha256']}, {version['people']} "
                     "people)", highlight=False)
    return EXIT_OK


def destroy_published(args: argparse.Namespace, operator: str) -> dict[str, Any]:
    """``lfr watchlist destroy --nats``: the deployment's published watchlist, from the store
    and from every node (each deletes its copy and audits it)."""
    from lfr.cluster.watchlist import WatchlistError

    try:
        return _on_bus(args, _destroy(operator))
    except WatchlistError as exc:
        raise UserError(str(exc)) from None


def _publish(bundle: Path, operator: str | None, key_id: str) -> Any:
    import getpass

    from lfr.cluster import watchlist

    async def run(bus: Any) -> dict[str, Any]:
        version = await watchlist.publish(bus, bundle, operator or getpass.getuser(),
                                          key_id=key_id)
        assert version is not None
        return msgspec.to_builtins(version)

    return run


def _destroy(operator: str) -> Any:
    from lfr.cluster import watchlist

    async def run(bus: Any) -> dict[str, Any]:
        return msgspec.to_builtins(await watchlist.destroy(bus, operator))

    return run


def _on_bus(args: argparse.Namespace, action: Any, create: bool = True) -> dict[str, Any]:
    """Run ``action(bus)`` on the deployment's bus (created when missing, unless not
    ``create``)."""
    import asyncio

    from lfr.cluster.bus import Bus, BusError, Names, connect

    credentials = _credentials(args, args.deployment, "console")

    async def run() -> dict[str, Any]:
        nc = await connect(args.nats, "lfr-console", credentials=credentials, wait=False)
        try:
            bus = Bus(nc, Names(args.deployment))
            # A console creates no pictures stream: the first node does, with its retention.
            result: dict[str, Any] = await action(await (
                bus.open(pictures_max_age_s=None) if create else bus.bind()))
            return result
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except BusError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith("nats") or isinstance(exc, OSError):
            raise _bus_error(exc, args.nats) from None
        raise


def add_watchlist_commands(wl_sub: Any, destroy: argparse.ArgumentParser) -> None:
    """``lfr watchlist publish`` and ``destroy --nats`` (called by lfr.cli.watchlist)."""
    publish = wl_sub.add_parser("publish", help="publish a bundle to a deployment spread over "
                                "nodes: the next version, used by every node within seconds")
    publish.add_argument("bundle", help="bundle folder (lfr watchlist build)")
    _add_deployment(publish)
    publish.add_argument("--operator", help="who publishes it (default: OS user)")
    publish.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    publish.set_defaults(func=cmd_watchlist_publish)
    destroy.add_argument("--nats", metavar="URL",
                         help="destroy the watchlist published to a deployment spread over nodes "
                         "(with --deployment): from the store and from every node")
    destroy.add_argument("--deployment", metavar="NAME", help="with --nats: the deployment")
    _add_credentials(destroy)


def cmd_cluster_report(args: argparse.Namespace) -> int:
    """``lfr report --nats URL --deployment NAME [--config C]``: exit 1 naming every node whose
    chain fails."""
    from lfr.cli.options import location_config
    from lfr.cluster.report import deployment_report

    if not args.deployment:
        raise UserError("report --nats: name the deployment (--deployment NAME)")
    config = location_config(args)
    data_dir = Path(args.data_dir) if args.data_dir else (
        config.resolved_data_dir() if config is not None else None)

    async def read(bus: Any) -> dict[str, Any]:
        return await deployment_report(bus, data_dir)

    report = _on_bus(args, read, create=False)
    if args.json:
        print_json(report)
    else:
        stderr.print(f"deployment {report['deployment']}: {report['alerts']} alerts "
                     f"({report['duplicates']} duplicates in the stream, "
                     f"{report['sightings']} further sightings), {report['decisions']} decided, "
                     f"{report['false_alerts']} false; {report['faces']} faces",
                     highlight=False)
        for name, node in report["nodes"].items():
            verdict = "; ".join(node["problems"]) or "chain verified" + (
                " against its own log" if node["checked_against_local_log"] else "")
            stderr.print(f"  {safe_text(name)}: {node['records']} audit records: "
                         f"{safe_text(verdict)}", highlight=False)
    failed = [name for name, node in report["nodes"].items() if node["problems"]]
    if failed:
        from lfr.cli.output import print_error

        print_error(f"audit chain fails on {', '.join(failed)}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    """``lfr decide``: the person logs in here; the node that raised the alert records the
    decision (outbox, audit log) and publishes it."""
    from lfr.cli.users import login
    from lfr.users import UsersFileError, UserStore

    try:
        store = UserStore(Path(args.users_file) if args.users_file else None)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    user = login(store, args.user, args.password_stdin)
    if not user.may("decide"):
        raise UserError(f"{user.name} is an {user.role}: auditors read, they do not decide")

    async def ask(bus: Any) -> dict[str, Any]:
        from lfr.cluster.console import NodeAway, request_decision
        from lfr.cluster.status import read_alerts

        found = (await read_alerts(bus))["alerts"]
        raised = {a["id"]: a["node"] for a in found}
        if args.alert_id not in raised:
            joined = _sighting_of(found, args.alert_id)
            if joined is not None:
                return joined
            return {"ok": False, "error": f"no alert {args.alert_id!r} in the stream of "
                    f"{args.deployment}"}
        try:
            return await request_decision(bus.nc, bus.names, raised[args.alert_id],
                                          args.alert_id, args.decision, user, args.note)
        except NodeAway as exc:
            raise UserError(str(exc)) from None

    result = _on_bus(args, ask, create=False)
    if args.json:
        print_json(result if result["ok"] else {**result, "exit_code": EXIT_FAILED})
    elif result["ok"]:
        decided = result["decision"]
        stderr.print(f"{decided['alert_id']}: {decided['decision']} by {decided['operator']}, "
                     f"recorded on {result['node']}", highlight=False)
    else:
        from lfr.cli.output import print_error

        print_error(result["error"])
    return EXIT_OK if result["ok"] else EXIT_FAILED


def _sighting_of(alerts: list[dict[str, Any]], sighting_id: str) -> dict[str, Any] | None:
    """``lfr decide``'s answer for a sighting id: which alert it joined, and that that alert is
    the one to decide. Not decided in its place: a sighting is a further camera's view of the
    person, and a decision on it (say "false alert": not the same person) would not hold for
    the alert the officer was shown; the officer decides that alert, having seen both."""
    for alert in alerts:
        for sighting in alert["sightings"]:
            if sighting["id"] == sighting_id:
                return {"ok": False, "sighting_of": alert["id"], "node": alert["node"],
                        "error": (
                            f"{sighting_id} is a further sighting ({sighting['node']}/"
                            f"{sighting['camera']} {sighting['time']}) of alert {alert['id']} "
                            f"({alert['name'] or alert['person_id']}, raised on "
                            f"{alert['node']}/{alert['camera']} {alert['time']}): it joined "
                            f"that alert, which is the one to decide: lfr decide "
                            f"{alert['id']} ...")}
    return None


def add_report_options(report: argparse.ArgumentParser) -> None:
    """``lfr report --nats URL --deployment NAME`` (called by lfr.cli.report)."""
    report.add_argument("--nats", metavar="URL",
                        help="a deployment spread over nodes: its report from the stream, every "
                        "node's audit chain verified (against its own log too with --config or "
                        "--data-dir)")
    report.add_argument("--deployment", metavar="NAME", help="with --nats: the deployment")
    _add_credentials(report)


def _add_bus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", required=True, metavar="URL",
                        help="the deployment's NATS server(s), e.g. nats://127.0.0.1:4222 "
                        "(several: comma-separated)")
    _add_credentials(parser)


def _add_deployment(parser: argparse.ArgumentParser) -> None:
    """The bus options and the deployment on it, as every console-side command takes them."""
    _add_bus(parser)
    parser.add_argument("--deployment", required=True, metavar="NAME",
                        help="the deployment's name (its config's `name`)")


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--credentials", metavar="FILE",
                        help="NATS credentials (lfr nats-config); default: this node's, or "
                        "console.json, in lfr's key directory under nats/DEPLOYMENT/ if there")


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="run one node of a deployment spread over machines: "
                          "its share of the cameras, its alerts to the NATS stream")
    node.add_argument("config", help="the deployment's config (TOML), the same on every node")
    _add_bus(node)
    node.add_argument("--node", metavar="NAME",
                      help="this node's name (letters, digits, '-', '_'; default: host name); "
                      "its records go to data_dir/NAME/")
    node.add_argument("--json", action="store_true",
                      help="print one JSON object on stdout when the node stops")
    node.set_defaults(func=cmd_node)

    nats = sub.add_parser("nats-config", help="lock a deployment's NATS server: its config "
                          "(JetStream, one user per node and console, subject permissions) and "
                          "each user's credentials in lfr's key directory")
    nats.add_argument("deployment", help="the deployment's name (its config's `name`)")
    nats.add_argument("--node", action="append", default=[], metavar="NAME",
                      help="a node's name (repeat for each node)")
    nats.add_argument("--console", action="append", default=[], metavar="NAME",
                      help="a console user (lfr status, alerts, watchlist publish); repeat; "
                      "console commands use the one named console by default")
    nats.add_argument("--listen", default="127.0.0.1:4222", metavar="HOST:PORT",
                      help="where the server listens (default 127.0.0.1:4222)")
    nats.add_argument("--store", required=True, metavar="DIR", help="JetStream's store folder")
    nats.add_argument("-o", "--output", required=True, metavar="FILE",
                      help="server config to write (0600): nats-server -c FILE")
    nats.add_argument("--credentials-dir", metavar="DIR",
                      help="write the credentials here (default: lfr's key directory, "
                      "nats/DEPLOYMENT/)")
    nats.add_argument("--tls-cert", metavar="PEM", help="the server's TLS certificate (chain); "
                      "required beyond loopback")
    nats.add_argument("--tls-key", metavar="PEM", help="its private key")
    nats.add_argument("--tls-ca", metavar="PEM", help="what clients check the server against "
                      "(default: --tls-cert itself, a self-signed certificate)")
    nats.add_argument("--data-key", metavar="FILE",
                      help="the deployment's data key, written beside the credentials as "
                      "data.key for every node (default: yours, lfr's key directory's data.key, "
                      "the one your bundles are sealed with)")
    nats.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    nats.set_defaults(func=cmd_nats_config)

    register_console(sub)

    decide = sub.add_parser("decide", help="a deployment spread over nodes: decide on an alert; "
                            "the node that raised it records and publishes the decision")
    decide.add_argument("alert_id", help="the alert (lfr alerts)")
    decide.add_argument("decision", choices=("confirmed", "false_alert", "no_action"))
    _add_deployment(decide)
    decide.add_argument("--user", metavar="NAME", help="who decides (lfr users; asked if not "
                        "given)")
    decide.add_argument("--password-stdin", action="store_true",
                        help="read --user's password from the first line of stdin")
    decide.add_argument("--users-file", metavar="FILE",
                        help="the deployment's users (default: users.json in lfr's key "
                        "directory)")
    decide.add_argument("--note", default="", help="a note kept with the decision")
    decide.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    decide.set_defaults(func=cmd_decide)

    for name, func, what in (("status", cmd_status, "its nodes and which camera runs where"),
                             ("alerts", cmd_alerts, "its alerts in the stream, with decisions")):
        parser = sub.add_parser(name, help=f"a deployment spread over nodes: {what}")
        _add_deployment(parser)
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        parser.set_defaults(func=func)


FIRST_CONNECT_S = 15.0


def cmd_console(args: argparse.Namespace) -> int:
    """``lfr console``: the operator's dashboard (``--dashboard``) and the browser viewer
    (``--web HOST:PORT``) over a deployment spread over nodes, fed by its bus; its own audit
    log (logins, decisions asked) in its data dir."""
    import anyio

    from lfr.audit import AuditError, AuditLog
    from lfr.cluster.bus import BusError
    from lfr.users import UsersFileError, UserStore

    if not args.dashboard and not args.web:
        raise UserError("console: say what to show: --dashboard (this terminal), "
                        "--web HOST:PORT (the browser viewer), or both")
    try:
        store = UserStore(Path(args.users_file) if args.users_file else None)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None
    config = None
    if args.config:
        from lfr.config import load_config
        from lfr.plugins import ConfigError

        try:
            config = load_config(Path(args.config))
        except ConfigError as exc:
            raise UserError(str(exc)) from None
    credentials = _credentials(args, args.deployment, "console")
    console_name = credentials.user if credentials is not None else "console"
    data_dir = (Path(args.data_dir) if args.data_dir
                else config.resolved_data_dir() / console_name if config is not None
                else Path("lfr-data") / args.deployment / console_name)
    try:
        audit_log = AuditLog(data_dir, **(config.audit_log_options() if config else {}))
    except AuditError as exc:
        raise UserError(str(exc)) from None
    with audit_log:
        user = None
        if args.dashboard:
            user = _dashboard_login(args, store, audit_log, console_name)
        reader = _picture_reader(args, config, credentials)
        if reader.key is None:
            stderr.print(f"console: {reader.reason}: alerts are shown without them",
                         highlight=False)
        try:
            anyio.run(_run_console, args, store, credentials, reader, user, audit_log,
                      console_name)
        except KeyboardInterrupt:
            pass
        except BusError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith("nats"):
                raise _bus_error(exc, args.nats) from None
            raise
    return EXIT_OK


def _dashboard_login(args: argparse.Namespace, store: Any, audit_log: Any,
                     console_name: str) -> Any:
    """The terminal dashboard's user, logged in here; the attempt audited either way."""
    from lfr.cli.users import login
    from lfr.cluster.console import ConsoleAudit

    audit = ConsoleAudit(audit_log, console_name)
    try:
        user = login(store, args.user, args.password_stdin)
    except UserError as exc:
        audit.record_login(args.user or "", None, "dashboard", str(exc))
        raise
    if not user.may("decide"):
        refused = (f"{user.name} is an {user.role}: the console's dashboard is for operators "
                   "and supervisors (auditors: lfr alerts, lfr report)")
        audit.record_login(user.name, user.role, "dashboard", refused)
        raise UserError(refused)
    audit.record_login(user.name, user.role, "dashboard")
    return user


async def _run_console(args: argparse.Namespace, store: Any, credentials: Any, reader: Any,
                       user: Any, audit_log: Any, console_name: str) -> None:
    import anyio

    from lfr.cluster.bus import Bus, Names, connect
    from lfr.cluster.console import ConsoleAudit, ConsoleModel, follow
    from lfr.cluster.viewer import request_viewer

    web = None
    if args.web:
        from lfr.config import WebConfig
        from lfr.web.deployment import ConsoleWeb

        try:
            web = ConsoleWeb(WebConfig(listen=args.web, tls_cert=args.tls_cert,
                                       tls_key=args.tls_key), users=store)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    names = Names(args.deployment)
    model = ConsoleModel(args.deployment)
    audit = ConsoleAudit(audit_log, console_name)
    # It reconnects for ever once connected; the first connection is given a bound, so
    # a wrong address is an error rather than a silent wait.
    try:
        with anyio.fail_after(FIRST_CONNECT_S):
            nc = await connect(args.nats, "lfr-console", credentials=credentials,
                               on_state=model.on_bus_state)
    except TimeoutError:
        raise UserError(f"NATS at {args.nats}: no server answered within "
                        f"{FIRST_CONNECT_S:.0f} s") from None
    try:
        bus = await Bus(nc, names).bind()

        async def decide(node: str, alert_id: str, decision: str, by: Any,
                         note: str) -> dict[str, Any]:
            return await audit.decide(nc, names, node, alert_id, decision, by, note)

        async def signal(node: str, request: dict[str, Any]) -> dict[str, Any]:
            return await request_viewer(nc, names, node, request)

        async def picture(node: str, item_id: str, field: str) -> bytes:
            return await reader.get(bus, node, item_id, field)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, bus, model)
            if web is not None:
                tg.start_soon(web.run, model, decide, signal,
                              picture if reader.key is not None else None, reader.status,
                              audit)
            if user is not None:
                from lfr.dashboard.cluster import ConsoleDashboard

                dashboard = ConsoleDashboard(user, decide, pictures=reader.status)
                await dashboard.run(model)
                tg.cancel_scope.cancel()
    finally:
        await nc.close()


def _picture_reader(args: argparse.Namespace, config: Any, credentials: Any) -> Any:
    """What opens the alert pictures: the deployment's data key from ``--config``'s ``[keys]
    data_key``, else where lfr nats-config provisioned it (lfr.cluster.credentials
    .console_data_key); without one they stay sealed."""
    from lfr.cluster.credentials import console_data_key, credentials_file
    from lfr.cluster.pictures import PictureReader
    from lfr.keys import KeyFileError

    explicit = getattr(args, "credentials", None)
    try:
        key, reason = console_data_key(
            config.data_key_file() if config is not None else None,
            credentials_file(args.deployment, "console", Path(explicit) if explicit else None),
            credentials.data_key_id if credentials is not None else "")
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    return PictureReader(key, reason)


def register_console(sub: Any) -> None:
    console = sub.add_parser("console", help="a deployment spread over nodes: the operator's "
                             "dashboard and the browser viewer over every node's cameras and "
                             "alerts; decisions go to the node that raised the alert")
    _add_deployment(console)
    console.add_argument("--config", metavar="CONFIG",
                         help="the deployment's config: its [keys] data_key opens the alert "
                         "pictures (default: the data.key lfr nats-config wrote beside the "
                         "console's credentials; without a key the pictures stay sealed), its "
                         "data_dir and [audit] settings hold the console's audit log")
    console.add_argument("--data-dir", metavar="DIR",
                         help="where the console keeps its own audit log (logins, decisions "
                         "asked; default: the config's data_dir/CONSOLE with --config, else "
                         "lfr-data/DEPLOYMENT/CONSOLE; CONSOLE: its credentials' user name)")
    console.add_argument("--dashboard", action="store_true",
                         help="the terminal dashboard (log in as an lfr user first)")
    console.add_argument("--web", metavar="HOST:PORT",
                         help="the browser viewer here (users log in in the browser); beyond "
                         "loopback with --tls-cert and --tls-key")
    console.add_argument("--tls-cert", metavar="PEM", help="with --web: the viewer's TLS "
                         "certificate")
    console.add_argument("--tls-key", metavar="PEM", help="with --web: its private key")
    console.add_argument("--user", metavar="NAME", help="with --dashboard: who decides (lfr "
                         "users; asked if not given)")
    console.add_argument("--password-stdin", action="store_true",
                         help="read --user's password from the first line of stdin")
    console.add_argument("--users-file", metavar="FILE",
                         help="the deployment's users (default: users.json in lfr's key "
                         "directory), the same list `lfr decide` uses")
    console.set_defaults(func=cmd_console)
