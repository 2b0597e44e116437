"""Run every benchmark side by side and write bench/results/latest.json plus a Markdown summary.

    make bench                      # everything, 10 s per load point
    python -m bench.run --duration 5 --skip-litellm

Processes (each its own OS process; nothing shares an event loop with the load generator):
- fake upstreams (bench.fakes) and the slow SMTP server,
- the service (uvicorn main:app, one worker, ledger on, SQLite file),
- two bare passthroughs and a hello-world app (bench.apps),
- the LiteLLM proxy from bench/.venv-litellm (its own venv: never a project dependency),
- the load generator: wrk (C, from Debian's packages) or, for the in-flight test, bench.inflight.

With two or more cores the servers under test are pinned to core 0 and the
fakes and load generator to the other cores, so "one worker" is one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from bench.fakes import vendor_settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LITELLM_BIN = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
PYTHON = sys.executable
API_KEY = "bench-api-key"
LITELLM_KEY = "sk-bench-master-key"
PROMPT = "Summarise my day"
CONCURRENCIES = (1, 16, 64)

CORES = os.cpu_count() or 1
SERVER_CPUS = "0"
LOAD_CPUS = f"1-{CORES - 1}" if CORES > 1 else "0"


def _pinned(cpus: str, argv: list[str]) -> list[str]:
    if CORES > 1 and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *argv]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    started_at: float

    def rss_kib(self) -> int:
        """Resident memory of the process and all its descendants (LiteLLM and uvicorn may fork)."""
        total = 0
        pending = [self.popen.pid]
        while pending:
            pid = pending.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                pending.extend(int(child) for child in children)
            except (FileNotFoundError, StopIteration, ProcessLookupError):
                continue
        return total


@dataclass
class Bench:
    duration: float
    workdir: Path
    stack: ExitStack
    # The tree the service runs from: this checkout, or an older export for before/after comparisons.
    service_root: Path = ROOT
    results: dict[str, Any] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cpus: str = SERVER_CPUS,
        cwd: Path | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        self.stack.callback(handle.close)
        popen = subprocess.Popen(
            _pinned(cpus, argv),
            cwd=cwd or (self.workdir if name.startswith("litellm") else ROOT),
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name, popen, log, time.perf_counter())
        self.procs.append(proc)
        self.stack.callback(self._stop, proc)
        return proc

    @staticmethod
    def _stop(proc: Proc) -> None:
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()

    def stop(self, proc: Proc) -> None:
        self._stop(proc)

    @staticmethod
    def wait_ready(proc: Proc, url: str, timeout: float = 120.0) -> float:
        """Seconds from spawn to the first 200 from `url` (polled every 10 ms)."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=2) as client:
            while time.perf_counter() < deadline:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited early; see {proc.log}:\n{proc.log.read_text()[-3000:]}")
                try:
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - proc.started_at
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"{proc.name} not ready after {timeout} s; see {proc.log}")

    # --- processes -----------------------------------------------------------------

    def fakes(self, name: str, latencies: dict[str, float], smtp_delay: float = 0.0) -> tuple[str, int]:
        port, smtp_port = free_port(), free_port()
        argv = [PYTHON, "-m", "bench.fakes", "--port", str(port), "--smtp-port", str(smtp_port)]
        argv += ["--smtp-delay", str(smtp_delay)]
        for vendor, seconds in latencies.items():
            argv += ["--latency", f"{vendor}={seconds}"]
        proc = self.spawn(name, argv, cpus=LOAD_CPUS)
        self.wait_ready(proc, f"http://127.0.0.1:{port}/hello")
        return f"http://127.0.0.1:{port}", smtp_port

    def service(self, name: str, fake_url: str, smtp_port: int, **extra: str) -> tuple[Proc, str, float]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {key.upper(): _env_value(value) for key, value in vendor_settings(fake_url, smtp_port).items()}
        env.update(
            APP_API_KEY=API_KEY,
            DATABASE_URL=f"sqlite+aiosqlite:///{self.workdir}/{name}.db",
            PUBLIC_BASE_URL=url,
            # Per-client limiting stays ON (its cost is measured); the budget is just out of the load's reach.
            RATE_LIMIT_PER_MINUTE="1000000000",
            HTTP_MAX_CONNECTIONS="300",
        )
        env.update({key.upper(): value for key, value in extra.items()})
        argv = [PYTHON, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--no-access-log", "--log-level", "warning"]
        proc = self.spawn(name, argv, env=env, cwd=self.service_root)
        ready = self.wait_ready(proc, url + "/health")
        return proc, url, ready

    def zero_config_footprint(self) -> dict[str, float]:
        """Start the service with nothing configured but its database and API key; RSS 2 s after the first 200."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "APP_API_KEY": API_KEY,
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir}/zero-config.db",
            "PYTHONPATH": str(self.service_root),
        }
        # Nothing from this shell's environment or a .env may configure an integration: settings are read from
        # the environment (filtered) and from `.env` in the working directory, which is the empty workdir.
        clean = {key: value for key, value in os.environ.items() if key.upper() not in _service_setting_names()}
        argv = [PYTHON, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--no-access-log", "--log-level", "warning"]
        log = self.workdir / "service-zero-config.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                _pinned(SERVER_CPUS, argv),
                cwd=self.workdir,
                env={**clean, **env},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            proc = Proc("service-zero-config", popen, log, time.perf_counter())
            try:
                ready = self.wait_ready(proc, url + "/health")
                time.sleep(2)
                return {"ready_s": round(ready, 3), "idle_rss_mib": round(proc.rss_kib() / 1024, 1)}
            finally:
                self._stop(proc)

    def app(self, name: str, target: str, fake_url: str, **extra: str) -> str:
        port = free_port()
        argv = [PYTHON, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--no-access-log", "--log-level", "warning"]
        proc = self.spawn(name, argv, env={"BENCH_UPSTREAM": fake_url, **extra})
        url = f"http://127.0.0.1:{port}"
        self.wait_ready(proc, url + "/docs")
        return url

    def litellm(self, fake_url: str) -> tuple[Proc, str, float]:
        port = free_port()
        config = self.workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: claude-haiku-4-5\n"
            "    litellm_params:\n"
            "      model: anthropic/claude-haiku-4-5\n"
            f"      api_base: {fake_url}\n"
            "      api_key: fake-anthropic-key\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        argv = [str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--num_workers", "1"]
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
        proc = self.spawn("litellm", argv, env=env)
        url = f"http://127.0.0.1:{port}"
        ready = self.wait_ready(proc, url + "/health/liveliness")
        return proc, url, ready

    # --- load ----------------------------------------------------------------------

    def wrk(
        self,
        url: str,
        *,
        concurrency: int,
        method: str = "GET",
        body: str | None = None,
        headers: dict[str, str] | None = None,
        requests_file: Path | None = None,
        signed_header: str | None = None,
        duration: float | None = None,
    ) -> dict[str, Any]:
        env = {"WRK_METHOD": method, "WRK_HEADERS": "|".join(f"{k}: {v}" for k, v in (headers or {}).items())}
        if body is not None:
            env["WRK_BODY"] = body
        if requests_file is not None and signed_header is not None:
            env["WRK_REQUESTS_FILE"] = str(requests_file)
            env["WRK_SIGNED_HEADER"] = signed_header
        seconds = max(1, round(duration or self.duration))
        script = str(ROOT / "bench" / "wrk.lua")
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", script]
        done = subprocess.run(
            _pinned(LOAD_CPUS, [*argv, url]),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        line = [row for row in done.stdout.splitlines() if row.startswith("{")][-1]
        raw = json.loads(line)
        rps = raw["requests"] / (raw["duration_us"] / 1e6)
        return {
            "rps": round(rps, 1),
            "p50_ms": raw["p50_us"] / 1000,
            "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
            "requests": raw["requests"],
            "errors": raw["non_2xx"] + raw["connect_errors"] + raw["read_errors"] + raw["timeouts"],
        }


def _service_setting_names() -> set[str]:
    """Every environment variable the service reads (its settings), upper-cased."""
    sys.path.insert(0, str(ROOT))
    from core.settings import Settings, env_name

    return {env_name(field).upper() for field in Settings.model_fields}


def _env_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the five measurements ------------------------------------------------------------


def measure_overhead(bench: Bench, *, with_litellm: bool, targets: list[str] | None = None) -> None:
    """1. /ai-process vs the fake itself, two bare passthroughs and LiteLLM, at 1/16/64."""
    fake_url, smtp_port = bench.fakes("fakes-fast", {})
    zero_config = bench.zero_config_footprint()
    service, service_url, service_ready = bench.service("service", fake_url, smtp_port)
    bench.results["startup"] = {"service": {"ready_s": round(service_ready, 3)}, "service_zero_config": zero_config}
    time.sleep(2)  # idle, then memory
    bench.results["startup"]["service"]["idle_rss_mib"] = round(service.rss_kib() / 1024, 1)

    only_targets = targets
    targets: dict[str, dict[str, Any]] = {
        "direct fake": {
            "url": fake_url + "/v1/messages",
            "body": json.dumps(
                {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": PROMPT}]}
            ),
            "headers": {"Content-Type": "application/json"},
        },
        "service /ai-process": {
            "url": service_url + "/ai-process",
            "body": json.dumps({"text": PROMPT, "provider": "claude"}),
            "headers": {"Content-Type": "application/json", "X-API-Key": API_KEY},
        },
        # The same endpoint on the SDK-free provider (OpenAI-compatible JSON over the router's aiohttp session):
        # everything the service does per request, without the Anthropic SDK's CPU. Not a target of its own;
        # it separates the service's overhead from the SDK's (docs/benchmarks.md).
        "service /ai-process local": {
            "url": service_url + "/ai-process",
            "body": json.dumps({"text": PROMPT, "provider": "local"}),
            "headers": {"Content-Type": "application/json", "X-API-Key": API_KEY},
        },
        "httpx passthrough": {
            "url": bench.app("passthrough-httpx", "bench.apps:httpx_app", fake_url) + "/ai-process",
            "body": json.dumps({"text": PROMPT}),
            "headers": {"Content-Type": "application/json"},
        },
        "aiohttp passthrough": {
            "url": bench.app("passthrough-aiohttp", "bench.apps:aiohttp_app", fake_url) + "/ai-process",
            "body": json.dumps({"text": PROMPT}),
            "headers": {"Content-Type": "application/json"},
        },
    }
    if with_litellm and (not only_targets or any("LiteLLM" in wanted for wanted in only_targets)):
        litellm, litellm_url, litellm_ready = bench.litellm(fake_url)
        time.sleep(2)
        bench.results["startup"]["litellm"] = {
            "ready_s": round(litellm_ready, 3),
            "idle_rss_mib": round(litellm.rss_kib() / 1024, 1),
        }
        targets["LiteLLM proxy"] = {
            "url": litellm_url + "/chat/completions",
            "body": json.dumps({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": PROMPT}]}),
            "headers": {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"},
        }

    table: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        if only_targets and not any(wanted in name for wanted in only_targets):
            continue
        # Warm-up: connection pools, imports on first use, SQLite pages.
        bench.wrk(
            target["url"], concurrency=4, method="POST", body=target["body"], headers=target["headers"], duration=2
        )
        for concurrency in CONCURRENCIES:
            point = bench.wrk(
                target["url"], concurrency=concurrency, method="POST", body=target["body"], headers=target["headers"]
            )
            table.setdefault(name, {})[str(concurrency)] = point
            log(
                f"{name:22} c={concurrency:<3} {point['rps']:8.1f} req/s  p50 {point['p50_ms']:.1f} ms  "
                f"p99 {point['p99_ms']:.1f} ms  errors {point['errors']}"
            )
    bench.results["overhead"] = table
    bench.results["service_rss_after_load_mib"] = round(service.rss_kib() / 1024, 1)
    if not only_targets:
        measure_webhooks(bench, service_url, fake_url)
    for proc in list(bench.procs):
        bench.stop(proc)


def measure_webhooks(bench: Bench, service_url: str, fake_url: str) -> None:
    """4. Signed WhatsApp webhooks (signature, dedupe, ledger) vs a bare hello world, same run, same core."""
    hello_url = bench.app("hello", "bench.apps:hello_app", fake_url) + "/hello"
    requests_file = _signed_webhooks(bench.workdir, service_url + "/whatsapp-webhook", count=60_000)
    webhook = bench.wrk(
        service_url + "/whatsapp-webhook",
        concurrency=16,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        requests_file=requests_file,
        signed_header="X-Twilio-Signature",
    )
    hello = bench.wrk(hello_url, concurrency=16, method="POST", body="{}", headers={"Content-Type": "application/json"})
    bench.results["webhooks"] = {"whatsapp": webhook, "hello": hello, "ratio": round(webhook["rps"] / hello["rps"], 3)}
    bench.results["webhooks"]["unique_messages_available"] = 60_000
    log(f"webhooks {webhook['rps']} req/s vs hello {hello['rps']} req/s (errors {webhook['errors']})")


def _signed_webhooks(workdir: Path, url: str, *, count: int) -> Path:
    """Pre-built Twilio webhook posts, each with a unique MessageSid and a valid X-Twilio-Signature."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator("fake-twilio-token")
    path = workdir / "webhooks.tsv"
    with path.open("w") as out:
        for n in range(count):
            params = {
                "MessageSid": f"SM{n:032x}",
                "AccountSid": "AC" + "0" * 32,
                "From": "whatsapp:+15551234567",
                "To": "whatsapp:+14155238886",
                "Body": "help",
                "NumMedia": "0",
                "ProfileName": "Bench",
            }
            signature = validator.compute_signature(url, params)
            out.write(f"{signature}\t{urlencode(params)}\n")
    return path


def measure_event_loop(bench: Bench) -> None:
    """2. /health p99 idle, then with 200 slow (2 s) actions in flight: email, Slack, LLM.

    The same question is asked of the ceiling, the bare aiohttp passthrough with 200 slow LLM calls in flight
    (the only action it has), and of the service with LLM calls only, so the two compare like for like.
    """
    fake_url, smtp_port = bench.fakes("fakes-slow", {"default": 2.0}, smtp_delay=2.0)
    service, url, _ = bench.service("service-slow", fake_url, smtp_port, LLM_TIMEOUT_SECONDS="30")
    mixed = _health_under_load(bench, url, llm_only=False)
    llm_only = _health_under_load(bench, url, llm_only=True)
    bench.stop(service)
    passthrough = bench.app(
        "passthrough-aiohttp-slow", "bench.apps:aiohttp_app", fake_url, BENCH_UPSTREAM_CONNECTIONS="300"
    )
    ceiling = _health_under_load(bench, passthrough, llm_only=True)
    bench.results["event_loop"] = {
        **mixed,
        "service_llm_only": llm_only,
        "aiohttp_passthrough_llm_only": ceiling,
    }
    for name, point in (("service", mixed), ("service, LLM only", llm_only), ("aiohttp passthrough", ceiling)):
        log(
            f"/health p99 {name}: idle {point['idle']['p99_ms']} ms, with 200 in flight "
            f"{point['loaded']['p99_ms']} ms; driver {point['inflight_driver']}"
        )


def _health_under_load(bench: Bench, url: str, *, llm_only: bool) -> dict[str, Any]:
    """/health idle, then while bench.inflight keeps 200 slow actions in flight against `url`."""
    bench.wrk(url + "/health", concurrency=1, duration=2)
    idle = bench.wrk(url + "/health", concurrency=1)
    seconds = bench.duration + 8
    argv = [PYTHON, "-m", "bench.inflight", "--url", url, "--key", API_KEY, "--inflight", "200"]
    argv += ["--seconds", str(seconds), *(["--llm-only"] if llm_only else [])]
    driver = subprocess.Popen(_pinned(LOAD_CPUS, argv), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(4)  # let 200 requests get in flight
    loaded = bench.wrk(url + "/health", concurrency=1)
    out, _ = driver.communicate(timeout=seconds + 60)
    return {"idle": idle, "loaded": loaded, "inflight_driver": json.loads(out.strip().splitlines()[-1])}


def measure_briefing(bench: Bench, runs: int = 10) -> None:
    """3. Morning briefing with injected step latencies vs their sequential sum."""
    latencies = {"gemini": 0.6, "anthropic": 0.6, "openai": 0.6, "toggl": 0.4, "slack": 0.2}
    fake_url, smtp_port = bench.fakes("fakes-briefing", latencies)
    service, url, _ = bench.service("service-briefing", fake_url, smtp_port)
    timings = []
    statuses = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
        client.post("/morning-briefing", json={})  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            response = client.post("/morning-briefing", json={})
            timings.append((time.perf_counter() - started) * 1000)
            statuses.append((response.status_code, response.json().get("status")))
    llm, toggl, slack = latencies["gemini"], latencies["toggl"], latencies["slack"]
    bench.results["briefing"] = {
        "step_latency_s": {"plan (LLM)": llm, "timer (Toggl)": toggl, "slack": slack},
        "sequential_sum_ms": round((llm + toggl + slack) * 1000, 1),
        "target_ms": round((max(llm, toggl) + slack) * 1000 + 50, 1),
        "median_ms": round(statistics.median(timings), 1),
        "max_ms": round(max(timings), 1),
        "runs": runs,
        "statuses": sorted(set(map(str, statuses))),
    }
    log(f"briefing {bench.results['briefing']}")
    bench.stop(service)


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    litellm_version = None
    if LITELLM_BIN.exists():
        pip = LITELLM_BIN.parent / "pip"
        shown = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True).stdout
        litellm_version = next((row.split()[-1] for row in shown.splitlines() if row.startswith("Version:")), None)
    return {
        "cpu_model": model,
        "cores": CORES,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk_version[0] if wrk_version else None,
        "litellm": litellm_version,
        "pinning": f"servers on CPU {SERVER_CPUS}, fakes and load on CPU {LOAD_CPUS}" if CORES > 1 else "none",
        "load_average_before": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the service against bare passthroughs and LiteLLM.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--only", choices=["overhead", "webhooks", "event-loop", "briefing"], action="append")
    parser.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        help="run the service from this tree (e.g. `git archive OLD | tar -x -C /tmp/before`) to compare versions",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--targets", nargs="+", help="only these overhead targets (substring), e.g. service httpx")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk (make bench does it)")
    with_litellm = not args.skip_litellm
    if with_litellm and not LITELLM_BIN.exists():
        sys.exit(f"{LITELLM_BIN} is missing: `make bench` installs it (or pass --skip-litellm)")
    only = set(args.only or ["overhead", "event-loop", "briefing"])  # overhead includes the webhooks
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        bench = Bench(duration=args.duration, workdir=Path(tmp), stack=stack, service_root=args.service_root.resolve())
        bench.results["service_root"] = str(bench.service_root)
        bench.results["machine"] = machine()
        bench.results["duration_s"] = args.duration
        bench.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            if "overhead" in only:
                measure_overhead(bench, with_litellm=with_litellm, targets=args.targets)
            if "webhooks" in only and "overhead" not in only:
                fake_url, smtp_port = bench.fakes("fakes-fast", {})
                _, service_url, _ = bench.service("service", fake_url, smtp_port)
                measure_webhooks(bench, service_url, fake_url)
            if "event-loop" in only:
                measure_event_loop(bench)
            if "briefing" in only:
                measure_briefing(bench)
        finally:
            out = args.output
            out.write_text(json.dumps(bench.results, indent=2))
            log(f"results in {out}")
            keep = RESULTS / "logs"
            keep.mkdir(exist_ok=True)
            for proc in bench.procs:
                if proc.log.exists():
                    shutil.copy(proc.log, keep / proc.log.name)


if __name__ == "__main__":
    main()
