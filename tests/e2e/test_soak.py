"""A randomized soak of create / run / connect / disconnect / publish / remove operations; after
everything is removed, links, rules, state rows and leases equal the starting point (dk fixture).
PYBRIDGE_SOAK_OPS sets the length (CI runs a reduced soak; scripts/soak.sh runs the full one).

Beyond ~300 operations dockerd 20.10 sometimes keeps counting an endpoint on a network after all
its containers are gone (moby/moby#42119: "has active endpoints" with no endpoint left), so the
network cannot be removed until dockerd restarts; no endpoint of that network is in pybridge's
state then. The full soak can hit that; CI's reduced one has not.

dockerd 26 and later (not 20.10) refuse `network connect` for a container whose first network
(its network mode) was removed: "could not find a network matching network mode", with Docker's
own driver too. The soak models that: such a connect may fail with exactly that error."""

import os
import random

from .dockerenv import docker, free_subnet, sh


def test_randomized_soak_leaves_nothing_behind(dk):
    seed = int(os.environ.get("PYBRIDGE_SOAK_SEED", random.randrange(1 << 30)))
    print(f"soak seed {seed} (PYBRIDGE_SOAK_SEED)")
    rng = random.Random(seed)
    ops = int(os.environ.get("PYBRIDGE_SOAK_OPS", "80"))
    nets: list[str] = []
    members: dict[str, set[str]] = {}  # container -> networks
    first: dict[str, str] = {}  # container -> the network it was started on
    removed: set[str] = set()
    counts: dict[str, int] = {}
    for _ in range(ops):
        choice = rng.choice(["net", "run", "run", "run", "connect", "disconnect", "rm", "rm", "rmnet"])
        counts[choice] = counts.get(choice, 0) + 1
        if choice == "net" or not nets:
            if len(nets) < 4:
                nets.append(dk.network("--subnet", free_subnet()))
        elif choice == "run":
            net = rng.choice(nets)
            extra = ("-p", f"{rng.randrange(20000, 29000)}:80") if rng.random() < 0.3 else ()
            try:
                c = dk.run(net, *extra)
                members[c], first[c] = {net}, net
            except AssertionError as e:
                assert "already published" in str(e), e  # a random host port may collide
        elif choice == "connect" and members:
            c = rng.choice(sorted(members))
            free = [n for n in nets if n not in members[c]]
            if free:
                net = rng.choice(free)
                res = sh("docker", "network", "connect", net, c, check=False)
                if res.returncode == 0:
                    members[c].add(net)
                else:
                    assert first[c] in removed and "could not find a network matching network mode" in res.stderr, (
                        res.stderr
                    )
                    counts["connect refused: first network removed"] = (
                        counts.get("connect refused: first network removed", 0) + 1
                    )
        elif choice == "disconnect" and members:
            c = rng.choice(sorted(members))
            if len(members[c]) > 1:
                net = rng.choice(sorted(members[c]))
                docker("network", "disconnect", net, c)
                members[c].discard(net)
        elif choice == "rm" and members:
            c = rng.choice(sorted(members))
            docker("rm", "-f", c)
            del members[c]
        elif choice == "rmnet":
            empty = [n for n in nets if not any(n in m for m in members.values())]
            if empty:
                net = rng.choice(empty)
                docker("network", "rm", net)
                nets.remove(net)
                removed.add(net)
    # everything still there answers: one container per network reaches another by name
    for net in nets:
        here = [c for c, m in members.items() if net in m]
        if len(here) >= 2:
            assert dk.exec(here[0], "ping", "-c1", "-W2", here[1], check=False).returncode == 0
    print(f"soak: {ops} operations {counts}")
