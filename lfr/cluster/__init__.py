"""A deployment spread over nodes on NATS JetStream: the bus (``bus``), camera leases
(``leases``), a node's records to the stream (``publisher``), the node (``node``) and what a
console reads (``status``). Faces stay on the node that saw them; only alerts (without images),
decisions, audit records and heartbeats cross the network."""
