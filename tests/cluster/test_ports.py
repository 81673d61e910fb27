"""The local cluster's ports: a Ray node given one port twice refuses to start (a flake seen in make test)."""

import re

from cluster.local import free_ports, ray_node_cmd


def test_free_ports_are_distinct_and_avoid_the_given_ones():
    avoid = set(free_ports(8))
    # Drawn one at a time, a node's 9 ports held a repeat in 10 of 5,000 tries here; at that rate
    # 100 rounds of 50 would repeat one with a probability above 0.99.
    for _ in range(100):
        ports = free_ports(50, avoid=avoid)
        assert len(set(ports)) == 50 and not avoid & set(ports)


def test_every_port_of_a_node_is_its_own():
    head, dash = free_ports(2)
    for is_head in (True, False):
        cmd = ray_node_cmd("/unused", head_port=head, cpus=1, resources={}, head=is_head, dashboard_port=dash)
        ports = [int(m) for m in re.findall(r"-port=(\d+)$", "\n".join(cmd), re.M)]
        assert len(ports) == len(set(ports)) == (9 if is_head else 6), cmd
        assert (head in ports) == (dash in ports) == is_head
