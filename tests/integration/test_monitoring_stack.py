"""The monitoring stack end to end, on real parts: exporter → Prometheus → rule → Alertmanager → e-mail.

The ``ds01_monitoring`` role is run with ``ansible-playbook`` into a sandbox root (``ds01_manage_system: false``,
as the demo does) with Prometheus, Alertmanager (e-mail and webhook receivers), the dcgm-exporter unit and the
Grafana dashboards turned on. What it rendered is what runs:

- the real ``ds01 exporter serve`` over a known engine state: real containers on the real Docker engine holding
  fake GPUs (the only fake, at the NVML boundary), two of them on the same MIG slot (a double booking); the
  users' slices are real kernel cgroups; the detector, the lifecycle sweep and a gateway (``ds01 detect once``,
  ``ds01 lifecycle run``, ``ds01 gateway serve``) ran for real, and a writer lost an event to a read-only log
  file system, so every metric family the rules and dashboards name is there;
- Debian's ``prometheus`` with the role's ``prometheus.yml`` and arguments (``/etc/default/prometheus``), a 1 s
  scrape and evaluation interval, and the role's rules;
- Debian's ``prometheus-alertmanager`` with the role's ``alertmanager.yml`` and arguments, delivering to an SMTP
  sink (aiosmtpd) and a webhook, both on loopback.

``DS01GPUDoubleBooked`` must fire and arrive as an e-mail and a webhook call. Every PromQL expression of the rules
and dashboards is then run against that Prometheus (``/api/v1/query``): it must parse, and every metric it names
must be among the series Prometheus holds. The dcgm-exporter unit is checked with ``systemd-analyze`` and must
point at the directory where the exporter wrote the job mapping.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import yaml
from aiosmtpd.controller import Controller

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLE = REPO / "roles" / "ds01_monitoring"
DEADLINE_S = 120.0
SUFFIX = uuid.uuid4().hex[:8]
GROUP = f"mon{SUFFIX[:6]}"  # its own group: the slices are real cgroups, named after the group
GPU0 = f"GPU-{SUFFIX}-0000-4000-8000-000000000000"
GPU1 = f"GPU-{SUFFIX}-1111-4111-8111-111111111111"
MIG_A = f"MIG-{SUFFIX}-0000-4000-8000-00000000000a"
MIG_B = f"MIG-{SUFFIX}-0000-4000-8000-00000000000b"
ALERT_TO = "gpu-admins@lab.test"
USERS = ("alice", "bob", "carol")
MEMORY_LIMIT = 256 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, probe, logs=(), deadline_s: float = DEADLINE_S):
    """Poll ``probe()`` until it returns something truthy; fail naming ``what``, its last answer and the logs."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = probe()
        except (OSError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if last:
                return last
        time.sleep(0.25)
    tails = "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}" for path in logs if path.exists())
    pytest.fail(f"{what}: not seen within {deadline_s:.0f} s; last answer: {last!r}\n{tails}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read().decode())


# --------------------------------------------------------------------------------------------
# Delivery sinks: SMTP (aiosmtpd) and a webhook, both on loopback
# --------------------------------------------------------------------------------------------


class MailSink:
    """aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "message": email.message_from_bytes(envelope.original_content, policy=email.policy.default),
            }
        )
        return "250 Message accepted for delivery"


class HookSink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(json.loads(body.decode()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args) -> None:
        return


# --------------------------------------------------------------------------------------------
# The known state: containers, real cgroups, a read-only log file system
# --------------------------------------------------------------------------------------------


def lab_limits(exporter_port: int) -> dict:
    return {
        "defaults": {
            "max_gpu_equivalents": 1.0,
            "max_containers_per_user": 5,
            "max_runtime_h": None,
            "idle_timeout_h": None,
            "gpu_hold_after_stop_h": None,
            "container_hold_after_stop_h": None,
        },
        "policies": {"created_container_timeout_m": None},
        "default_group": GROUP,
        "groups": {GROUP: {"members": list(USERS), "aggregate": {"memory_max": "256M"}}},
        "gpu_allocation": {"backend": "fake", "topology": "gpu-topology.yaml"},
        "monitoring": {"exporter_bind": "127.0.0.1", "exporter_port": exporter_port},
    }


TOPOLOGY = {
    "gpus": [
        {"index": 4, "uuid": GPU0, "name": "NVIDIA A100-SXM4-40GB", "memory_mib": 40960},
        {
            "index": 5,
            "uuid": GPU1,
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_mib": 40960,
            "mig": True,
            "instances": [{"profile": "3g.20gb", "uuid": MIG_A}, {"profile": "2g.10gb", "uuid": MIG_B}],
        },
    ]
}

CGROUP = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpuacct", "pids", "unified")


def slice_dirs(login: str) -> list:
    """The cgroup directories of ``login``'s slice, by systemd's naming rule, on this host's v1-hybrid tree."""
    rel = Path("ds01.slice") / f"ds01-{GROUP}.slice" / f"ds01-{GROUP}-{login}.slice"
    return [CGROUP / controller / rel for controller in CONTROLLERS if (CGROUP / controller).is_dir()]


@pytest.fixture
def slices():
    """Real kernel cgroups for each user's slice (alice's capped at 256 MiB), removed afterwards."""
    made = []
    try:
        for login in USERS:
            for path in slice_dirs(login):
                for part in (path.parent.parent, path.parent, path):
                    if not part.exists():
                        part.mkdir()
                        made.append(part)
        limit = CGROUP / "memory" / slice_dirs("alice")[0].relative_to(CGROUP / "memory")
        (limit / "memory.limit_in_bytes").write_text(str(MEMORY_LIMIT))
        yield
    finally:
        for part in reversed(made):
            with contextlib.suppress(OSError):
                part.rmdir()


@pytest.fixture
def engine_state(docker_client, empty_image, test_label):
    """alice holds GPU 4, bob and carol both hold MIG 5.1 (double-booked), carol's rogue container MIG 5.0."""
    made = []

    def create(name, user, uuids, slot=None, gpueq=None):
        labels = {**test_label.labels, "ds01.user": user, "ds01.container_type": "docker"}
        if slot is not None:
            labels.update(
                {"ds01.managed": "true", "ds01.gpu.slots": slot, "ds01.gpu.uuids": ",".join(uuids)}
                | {"ds01.gpu.gpueq": str(gpueq)}
            )
        container = docker_client.containers.create(
            empty_image,
            command=["none"],
            name=f"mon-{name}-{SUFFIX}",
            labels=labels,
            network_mode="none",
            device_requests=[docker.types.DeviceRequest(device_ids=list(uuids), capabilities=[["gpu"]])],
        )
        made.append(container)
        return container.name

    try:
        yield {
            "alice": create("alice-train", "alice", [GPU0], "4", 1.0),
            "bob": create("bob-nb", "bob", [MIG_B], "5.1", 2 / 7),
            "carol": create("carol-nb", "carol", [MIG_B], "5.1", 2 / 7),
            "rogue": create("carol-rogue", "carol", [MIG_A]),
        }
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


@pytest.fixture
def log_fs(tmp_path):
    """A tmpfs for the event log, so a writer can really lose an event to a read-only file system."""
    assert os.geteuid() == 0, "make test runs as root: this test mounts a tmpfs and makes cgroups"
    where = tmp_path / "root" / "var" / "log" / "ds01"
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["mount", "-o", "remount,rw", str(where)], check=False, capture_output=True)
    subprocess.run(["umount", str(where)], check=False, capture_output=True)
    if os.path.ismount(where):
        subprocess.run(["umount", "-l", str(where)], check=True)


class Processes:
    """Long-running children, each logging to a file; all terminated (then killed) at the end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list = []
        self.logs: list = []

    def start(self, name: str, argv: list, **kw) -> subprocess.Popen:
        log = self.logdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.close()


@pytest.fixture
def sinks():
    mail = MailSink()
    smtp_port = free_port()
    controller = Controller(mail, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    HookSink.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), HookSink)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    yield {"mail": mail, "smtp_port": smtp_port, "hook": HookSink, "hook_port": hook.server_address[1]}
    controller.stop()
    hook.shutdown()
    hook.server_close()


# --------------------------------------------------------------------------------------------
# The role, rendered into the sandbox root
# --------------------------------------------------------------------------------------------


def render_role(tmp_path: Path, root: Path, variables: dict) -> None:
    playbook = tmp_path / "monitoring.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The monitoring role into a sandbox root",
                    "hosts": "localhost",
                    "gather_facts": True,
                    "gather_subset": ["min"],
                    "roles": [{"role": "ds01.infra.ds01_monitoring"}],
                }
            ]
        )
    )
    extra = {
        **variables,
        "ds01_root": str(root),
        "ds01_manage_system": False,
        "ansible_python_interpreter": sys.executable,
    }
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", json.dumps(extra), str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, f"the role failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def service_args(defaults_file: Path) -> list:
    """The ARGS of a Debian EnvironmentFile, split as systemd splits an unquoted ``$ARGS``."""
    text = defaults_file.read_text()
    match = re.search(r'^ARGS="(.*)"$', text, re.M)
    assert match, f"{defaults_file} sets no ARGS:\n{text}"
    return shlex.split(match.group(1))


# --------------------------------------------------------------------------------------------
# PromQL: the expressions that ship, and the metric names each one selects
# --------------------------------------------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
KEYWORDS |= {"atan2", "inf", "nan", "start", "end"}
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"}
AGGREGATORS |= {"quantile"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      | (?P<range>\[[^\]]*\])
      | (?P<dur>(?:\d+(?:ms|[smhdwy]))+\b)
      | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])""",
    re.X,
)


def tokens(expr: str) -> list:
    out, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        assert match, f"cannot read PromQL at {expr[pos : pos + 30]!r} in {expr!r}"
        if match.lastgroup != "ws":
            out.append((match.lastgroup, match.group()))
        pos = match.end()
    return out


def metric_names(expr: str) -> set:
    """The metric names ``expr`` selects: identifiers in expression position that are not functions, aggregations
    or keywords, plus ``{__name__="..."}`` matchers. Read from Prometheus's own formatting of the expression."""
    toks = tokens(expr)
    names, depth, i = set(), 0, 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
        elif depth:
            if kind == "ident" and text == "__name__" and nxt in ("=",) and toks[i + 2][0] == "str":
                names.add(toks[i + 2][1][1:-1])
        elif kind == "ident" and text in GROUPING and nxt == "(":
            i = next(j for j in range(i, len(toks)) if toks[j][1] == ")")
        elif kind == "ident" and not (nxt == "(" or text in KEYWORDS or (text in AGGREGATORS and nxt in GROUPING)):
            names.add(text)
        i += 1
    return names


def rule_expressions() -> list:
    doc = yaml.safe_load((ROLE / "files" / "ds01_alerts.yml").read_text())
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def dashboard_expressions(dashboards_dir: Path) -> tuple:
    """([(where, expr)], {dashboard file: {variable: its label_values query}}) of the installed dashboards."""
    exprs, variables = [], {}
    for path in sorted(dashboards_dir.glob("*.json")):
        board = json.loads(path.read_text())
        variables[path.name] = {
            v["name"]: v["definition"] for v in board["templating"]["list"] if v.get("type") == "query"
        }
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                exprs.append((f"{path.name}: {panel['title']} ({target['refId']})", target["expr"]))
    return exprs, variables


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def test_alert_travels_from_the_exporter_to_an_email(
    tmp_path, ds01_bin, test_label, empty_image, engine_state, slices, log_fs, processes, sinks
):
    root = tmp_path / "root"
    etc = root / "etc" / "ds01"
    state_dir, run_dir = root / "var" / "lib" / "ds01", root / "run" / "ds01"
    for path in (etc, state_dir, run_dir):
        path.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "dcgm", "node")}
    limits = lab_limits(ports["exporter"])
    (etc / "gpu-topology.yaml").write_text(yaml.safe_dump(TOPOLOGY))
    config = etc / "resource-limits.yaml"
    paths = {"state_dir": str(state_dir), "log_dir": str(log_fs), "run_dir": str(run_dir), "home_roots": []}
    config.write_text(yaml.safe_dump({**limits, "paths": paths}))

    # 1. The role renders the stack into the sandbox root.
    render_role(
        tmp_path,
        root,
        {
            "ds01_common_limits": limits,
            "ds01_common_state_dir": "/var/lib/ds01",
            "ds01_monitoring_prometheus_enabled": True,
            "ds01_monitoring_prometheus_listen": f"127.0.0.1:{ports['prometheus']}",
            "ds01_monitoring_scrape_interval": "1s",
            "ds01_monitoring_evaluation_interval": "1s",
            "ds01_monitoring_dcgm_exporter_listen": f"127.0.0.1:{ports['dcgm']}",
            "ds01_monitoring_node_targets": [f"127.0.0.1:{ports['node']}"],
            "ds01_monitoring_alertmanager_enabled": True,
            "ds01_monitoring_alertmanager_listen": f"127.0.0.1:{ports['alertmanager']}",
            "ds01_monitoring_alertmanager_email_to": [ALERT_TO],
            "ds01_monitoring_alertmanager_smtp_smarthost": f"127.0.0.1:{sinks['smtp_port']}",
            "ds01_monitoring_alertmanager_smtp_from": "ds01-alerts@gpu1.lab.test",
            "ds01_monitoring_alertmanager_smtp_require_tls": False,
            "ds01_monitoring_alertmanager_webhook_urls": [f"http://127.0.0.1:{sinks['hook_port']}/ds01"],
            "ds01_monitoring_alertmanager_group_wait": "1s",
            "ds01_monitoring_alertmanager_group_interval": "1s",
            "ds01_monitoring_dcgm_exporter_bin": "/bin/true",  # the admin's binary; here only the unit is checked
            "ds01_monitoring_grafana_enabled": True,
        },
    )
    prometheus_yml = yaml.safe_load((root / "etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus_yml["scrape_configs"]}
    assert jobs == {
        "ds01": [f"127.0.0.1:{ports['exporter']}"],  # from the lab config's monitoring section
        "dcgm": [f"127.0.0.1:{ports['dcgm']}"],
        "node": [f"127.0.0.1:{ports['node']}"],
    }

    # 2. The known state: the detector, the lifecycle sweep and a gateway ran for real.
    def ds01(*args, check=True):
        proc = subprocess.run(
            [str(ds01_bin), "--config", str(config), *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert not check or proc.returncode == 0, f"ds01 {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    ds01("detect", "once")
    ds01("lifecycle", "run", "--only-label", str(test_label))
    gateway_socket = tmp_path / "gateway.sock"
    serve = ["gateway", "serve", "--listen", str(gateway_socket), "--upstream", "/var/run/docker.sock"]
    processes.start("gateway", [str(ds01_bin), "--config", str(config), *serve, "--socket-group", "root"])
    wait_for("the gateway's socket", gateway_socket.exists, processes.logs)
    through_gateway = docker.DockerClient(base_url=f"unix://{gateway_socket}", version="auto", timeout=30)
    try:
        assert through_gateway.ping()
        assert {c.name for c in through_gateway.containers.list(all=True)} >= set(engine_state.values())
        # GPU 4 is alice's: the allocator refuses it (an event with its code, counted in ds01_refusals_24h)
        with pytest.raises(docker.errors.APIError) as refused:
            through_gateway.containers.create(
                empty_image,
                command=["none"],
                name=f"mon-refused-{SUFFIX}",
                labels=test_label.labels,
                network_mode="none",
                device_requests=[docker.types.DeviceRequest(device_ids=[GPU0], capabilities=[["gpu"]])],
            )
        assert refused.value.status_code == 403 and "NO_GPU_AVAILABLE" in str(refused.value.explanation)
    finally:
        through_gateway.close()
    counters = run_dir / "gateway" / "metrics.json"
    wait_for(
        "the gateway's published request counters",
        lambda: sum(json.loads(counters.read_text())["requests"].values()) >= 3,
        processes.logs,
    )

    # 3. The real exporter; its first refresh records alice's quota alert, then the log turns read-only and a
    #    script's event is lost (counted for its writer).
    processes.start("exporter", [str(ds01_bin), "--config", str(config), "exporter", "serve", "--cache-s", "1"])
    exporter_url = f"http://127.0.0.1:{ports['exporter']}/metrics"
    events_log = log_fs / "events.jsonl"
    wait_for(
        "alice's quota.alert event in the log",
        lambda: events_log.exists() and '"quota.alert"' in events_log.read_text(),
        processes.logs,
    )
    subprocess.run(["mount", "-o", "remount,ro", str(log_fs)], check=True)
    ds01("events", "log", "maintenance.backup", "--source", "backup-script", "path=/data")
    wait_for(
        "the lost event in ds01_events_dropped_total",
        lambda: (
            'ds01_events_dropped_total{writer="backup-script"} 1.0'
            in urllib.request.urlopen(exporter_url).read().decode()
        ),
        processes.logs,
    )
    mapping = state_dir / "dcgm-job-mapping" / "4"
    wait_for("the job mapping of GPU 4", mapping.exists, processes.logs)
    assert mapping.read_text().split() == [f"alice/{engine_state['alice']}"]

    # 4. Prometheus and Alertmanager as the role configured them (arguments from the rendered EnvironmentFiles).
    am_args = service_args(root / "etc/default/prometheus-alertmanager")
    assert f"--web.listen-address=127.0.0.1:{ports['alertmanager']}" in am_args
    processes.start(
        "alertmanager", ["prometheus-alertmanager", *am_args, f"--storage.path={tmp_path / 'alertmanager-data'}"]
    )
    prom_args = service_args(root / "etc/default/prometheus")
    assert f"--web.listen-address=127.0.0.1:{ports['prometheus']}" in prom_args
    processes.start("prometheus", ["prometheus", *prom_args, f"--storage.tsdb.path={tmp_path / 'prometheus-data'}"])
    api = f"http://127.0.0.1:{ports['prometheus']}/api/v1"

    def query(expr: str) -> dict:
        url = f"{api}/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return get_json(url)
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read().decode())

    def ds01_target_up():
        targets = get_json(f"{api}/targets")["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "ds01" and t["health"] == "up"]

    wait_for("Prometheus scraping the ds01 exporter", ds01_target_up, processes.logs)
    loaded = get_json(f"{api}/rules")["data"]["groups"]
    shipped = [
        rule
        for group in yaml.safe_load((ROLE / "files/ds01_alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    assert sum(len(g["rules"]) for g in loaded) == len(shipped), "Prometheus did not load the role's rules"

    # 5. The double booking fires, and Alertmanager delivers it: an e-mail in the sink, a call to the webhook.
    def firing():
        alerts = get_json(f"{api}/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "DS01GPUDoubleBooked"
            and a["labels"]["slot"] == "5.1"
            and a["state"] == "firing"
        ]

    [alert] = wait_for("DS01GPUDoubleBooked firing in Prometheus", firing, processes.logs)
    assert alert["labels"]["severity"] == "critical" and float(alert["value"]) == 2

    def mail():
        return [m for m in sinks["mail"].messages if "DS01GPUDoubleBooked" in str(m["message"]["Subject"])]

    [message] = wait_for("the alert e-mail in the SMTP sink", mail, processes.logs)[:1]
    assert message["to"] == [ALERT_TO] and message["from"] == "ds01-alerts@gpu1.lab.test"
    assert str(message["message"]["Subject"]).startswith("[FIRING:")
    body = message["message"].get_body(preferencelist=("html", "plain")).get_content()
    assert "GPU slot 5.1" in body and "held by 2 containers" in body, body[:2000]

    def hooked():
        return [
            a
            for call in sinks["hook"].received
            for a in call["alerts"]
            if a["labels"]["alertname"] == "DS01GPUDoubleBooked" and a["labels"]["slot"] == "5.1"
        ]

    [hook_alert] = wait_for("the alert at the webhook", hooked, processes.logs)[:1]
    assert hook_alert["status"] == "firing" and hook_alert["annotations"]["summary"].endswith("is held by 2 containers")

    # 6. Every PromQL expression of the rules and dashboards parses and names only series Prometheus holds.
    dashboards_dir = root / "var/lib/grafana/dashboards/ds01"
    provider = yaml.safe_load((root / "etc/grafana/provisioning/dashboards/ds01.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(dashboards_dir)
    board_exprs, board_vars = dashboard_expressions(dashboards_dir)
    assert sorted(board_vars) == ["ds01-gpu-slots.json", "ds01-lab-overview.json", "ds01-user.json"]

    def label_values(definition: str) -> list:
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", definition)
        assert match, f"not a label_values() query: {definition}"
        selector = match.group(1).replace("$instance", ".+")
        assert metric_names(selector) <= series_names(), f"{definition} names a missing metric"
        url = f"{api}/label/{match.group(2)}/values?" + urllib.parse.urlencode({"match[]": selector})
        return get_json(url)["data"]

    def series_names() -> set:
        return set(get_json(f"{api}/label/__name__/values")["data"])

    # the recording rules and ALERTS exist once the rules have been evaluated
    wait_for(
        "the recording rules' series",
        lambda: (
            {"ds01:gpu_free_gpueq", "ds01:gpu_allocated_ratio", "ds01:user_gpu_quota_ratio", "ALERTS"} <= series_names()
        ),
        processes.logs,
    )
    for board, variables in board_vars.items():
        for name, definition in variables.items():
            assert label_values(definition), f"{board}: variable {name} ({definition}) has no values"
    assert "alice" in label_values(board_vars["ds01-user.json"]["user"])
    grafana = {"$instance": ".+", "$user": "alice", "$__rate_interval": "1m"}
    have = series_names()
    problems = []
    for where, expr in rule_expressions() + board_exprs:
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: a Grafana variable the test does not know: {expr}"
        answer = query(expr)
        if answer.get("status") != "success":
            problems.append(f"{where}: {answer.get('error')}\n    {expr}")
            continue
        formatted = get_json(f"{api}/format_query?" + urllib.parse.urlencode({"query": expr}))["data"]
        names = metric_names(formatted)
        if not names:
            problems.append(f"{where}: selects no metric at all\n    {formatted}")
        missing = sorted(names - have)
        if missing:
            problems.append(f"{where}: names series Prometheus does not hold: {missing}\n    {formatted}")
    assert not problems, "\n".join(problems)
    assert len(board_exprs) >= 40

    # 7. The dcgm-exporter unit: hardened, and reading the directory the exporter wrote the mapping to.
    unit = root / "etc/systemd/system/ds01-dcgm-exporter.service"
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M).group(1))
    mapping_dir = Path(exec_start[exec_start.index("--hpc-job-mapping-dir") + 1])
    assert (mapping_dir / "4").read_text() == mapping.read_text()
    assert f"127.0.0.1:{ports['dcgm']}" in exec_start
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, f"exposure above 2.5:\n{security.stdout[-1500:]}"
