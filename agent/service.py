"""`fleetfit-agent service install`: a systemd unit that runs the agent as a service.

systemd stops it with SIGTERM, on which the agent gives back a job it has just leased or finishes and
reports the one it is running; TimeoutStopSec leaves a profile time to end.
"""

import pathlib
import shlex
import sys

UNIT_NAME = "fleetfit-agent.service"


def unit_text(exe: str, identity: pathlib.Path, cache_dir: pathlib.Path | None, allow_dirs: list[pathlib.Path],
              user: str | None) -> str:
    args = [exe, "run", "--identity", str(identity)]
    if cache_dir:
        args += ["--cache-dir", str(cache_dir)]
    for d in allow_dirs:
        args += ["--allow-dir", str(d)]
    lines = [
        "[Unit]",
        "Description=fleetfit agent: profiles quantized LLMs for a fleetfit coordinator",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        f"ExecStart={shlex.join(args)}",
        "Restart=on-failure",
        "RestartSec=5",
        # exit 2 is a refusal that a restart cannot cure (a corrupt outbox, a second agent, not enrolled, revoked
        # credentials); `run` never exits because the coordinator is away or failing (it retries, forever)
        "RestartPreventExitStatus=2",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=600",
        "NoNewPrivileges=true",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def agent_executable() -> str:
    return str(pathlib.Path(sys.executable).parent / "fleetfit-agent")
