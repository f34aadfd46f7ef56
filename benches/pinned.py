#!/usr/bin/env python3
"""Helpers of `PARTS=pinned benches/compare.sh` (issue #12): idle TLS clients,
and the headline table of docs/benchmarks.md.

  pinned.py tls-clients --port PORT --ca CERT -c N -R RATE --hold SECS
                        (--fleet-key B64 | -u USER -P PASSWORD)
                        [--client-id TEMPLATE] [--report FILE]
      N MQTT 3.1.1 clients over TLS (Python `ssl`, asyncio), connected at RATE
      per second (open loop: latency counts from each connect's scheduled
      time), each waits for its CONNACK and then stays idle (no keepalive
      traffic: keepalive 120 s) until SECS after the last scheduled connect;
      then all send DISCONNECT and close. With --fleet-key each client signs
      its own Herald device password (identity/src/lib.rs), the username
      being the client id. The report has the keys of herald-loadtest's
      (clients, connected, connect_failed, first_error, latency_us.connect).

  pinned.py cpu-sampler --pid PID --out FILE [--interval SECS]
      Until PID exits (or this is stopped): every SECS (0.1) one line
      "<unix time> <utime+stime ticks of PID>" in FILE. The connect-rate
      comparison reads from it the broker's CPU time up to the last CONNACK.

  pinned.py report OUT_DIR DOC [--no-docs]
      Reads the reports of a pinned run in OUT_DIR (target/bench/compare/pinned),
      writes OUT_DIR/ratios.json and, unless --no-docs, regenerates the part of
      DOC between <!-- ratios:begin --> and <!-- ratios:end -->.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import ssl
import statistics
import sys
import time

from faults_summary import load  # a report, or None when missing or unreadable

BEGIN, END = "<!-- ratios:begin -->", "<!-- ratios:end -->"


# --- idle TLS clients -------------------------------------------------------------------------

def device_password(fleet_key: bytes, device_id: str, now: int) -> str:
    """Herald's device password (identity/src/lib.rs)."""
    secret = hmac.new(fleet_key, b"herald-device-secret-v1\n" + device_id.encode(), hashlib.sha256).digest()
    tag = hmac.new(secret, b"herald-mqtt-v1\n" + device_id.encode() + b"\n" + str(now).encode(),
                   hashlib.sha256).digest()
    return f"v1.{now}.{base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"


def mqtt_string(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, username, password, keepalive: int) -> bytes:
    flags = 0x02  # clean session
    payload = mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += mqtt_string(username)
    if password is not None:
        flags |= 0x40
        payload += mqtt_string(password)
    body = mqtt_string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload
    n, length = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


def percentiles(values_s):
    if not values_s:
        return None
    v = sorted(values_s)

    def at(q):
        return int(v[min(len(v) - 1, int(q * len(v)))] * 1e6)

    return {"count": len(v), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": int(v[-1] * 1e6)}


async def tls_clients(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    fleet_key = base64.b64decode(args.fleet_key) if args.fleet_key else None
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    phase = args.count / args.rate
    until = start + phase + args.hold
    latencies, writers = [], []
    state = {"failed": 0, "first_error": None, "tls_version": None}

    async def one(i):
        at = start + i / args.rate
        await asyncio.sleep(max(0.0, at - loop.time()))
        cid = args.client_id.replace("%i", str(i))
        if fleet_key:
            user, password = cid, device_password(fleet_key, cid, int(time.time()))
        else:
            user, password = args.username, args.password
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname=args.host), 30)
            writer.write(connect_packet(cid, user, password, 120))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readexactly(4), 30)
            if ack[0] != 0x20 or ack[3] != 0:
                writer.close()
                raise RuntimeError(f"CONNACK refused: {ack.hex()}")
            latencies.append(loop.time() - at)
            writers.append(writer)
            if state["tls_version"] is None:
                obj = writer.get_extra_info("ssl_object")
                state["tls_version"] = obj.version() if obj else None
        except Exception as e:  # noqa: BLE001 - counted and reported
            state["failed"] += 1
            if state["first_error"] is None:
                state["first_error"] = f"connect {cid}: {type(e).__name__}: {e}"

    await asyncio.gather(*(one(i) for i in range(args.count)))
    await asyncio.sleep(max(0.0, until - loop.time()))
    for w in writers:
        try:
            w.write(b"\xe0\x00")  # DISCONNECT
            w.close()
        except Exception:  # noqa: BLE001
            pass
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 15)
    except asyncio.TimeoutError:
        pass
    report = {
        "scenario": "tls-idle", "broker": f"{args.host}:{args.port}", "clients": args.count,
        "connect_rate": args.rate, "connected": len(latencies), "connect_failed": state["failed"],
        "errors": state["failed"], "first_error": state["first_error"],
        "tls_version": state["tls_version"], "latency_us": {},
    }
    p = percentiles(latencies)
    if p:
        report["latency_us"]["connect"] = p
    text = json.dumps(report, indent=1)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(f"tls-clients: {report['connected']} of {args.count} connected ({report['tls_version']}), "
          f"{state['failed']} failed" + (f"; first error: {state['first_error']}" if state["first_error"] else ""))
    return 0 if report["connected"] else 1


# --- CPU samples -----------------------------------------------------------------------------

def cpu_sampler(args):
    with open(args.out, "w") as f:
        while True:
            try:
                with open(f"/proc/{args.pid}/stat") as st:
                    fields = st.read().rsplit(")", 1)[1].split()
            except OSError:
                return 0
            f.write(f"{time.time():.3f} {int(fields[11]) + int(fields[12])}\n")
            f.flush()
            time.sleep(args.interval)


def ticks_at(samples, t):
    """Ticks at time t, linearly between the samples around it."""
    if not samples or t <= samples[0][0]:
        return samples[0][1] if samples else None
    for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)
    return samples[-1][1]


def read_samples(path):
    samples = []
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) == 2:
                samples.append((float(parts[0]), int(parts[1])))
    except (OSError, ValueError):
        pass
    return samples


# --- the headline table -----------------------------------------------------------------------

def parse_perf(path):
    """The final line of Kafka's ProducerPerformance: '100000 records sent, 4999.5 records/sec
    (1.22 MB/sec), 2.50 ms avg latency, 150.00 ms max latency, 2 ms 50th, 5 ms 95th, 10 ms 99th,
    20 ms 99.9th.'"""
    try:
        text = open(path).read()
    except OSError:
        return None
    found = None
    pat = re.compile(r"(\d+) records sent, ([\d.]+) records/sec .*?([\d.]+) ms avg latency, ([\d.]+) ms max "
                     r"latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th")
    for line in text.splitlines():
        m = pat.search(line)
        if m:
            found = m
    if not found:
        return None
    g = found.groups()
    return {"records": int(g[0]), "rate": float(g[1]), "avg_ms": float(g[2]), "max_ms": float(g[3]),
            "p50_ms": float(g[4]), "p95_ms": float(g[5]), "p99_ms": float(g[6]), "p999_ms": float(g[7])}


def read_metrics(path):
    """Prometheus text: {'name{labels}': value}."""
    found = {}
    try:
        for line in open(path):
            if line and not line.startswith("#"):
                parts = line.split()
                if len(parts) >= 2:
                    try:
                        found[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
    except OSError:
        pass
    return found


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"


def fmt_b(v):
    return "–" if v is None else f"{v:,.0f} B"


def num(x):
    return "–" if x is None else f"{x:,.0f}"


def report(out, doc, docs):
    run = {}
    try:
        for line in open(f"{out}/run.txt"):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                run[k] = v
    except OSError:
        sys.exit(f"pinned.py: no pinned run recorded in {out}/run.txt")
    settle = float(run.get("settle", "5"))
    rows, details = [], []  # rows: (goal, herald, reference, ratio, target, verdict)
    summary = {"run": run, "goals": []}

    def add(goal, target, herald, reference, ratio, verdict, **extra):
        rows.append((goal, herald, reference, ratio, target, verdict))
        summary["goals"].append(dict(goal=goal, target=target, herald=herald, reference=reference,
                                     ratio=ratio, verdict=verdict, **extra))

    # 1. Memory per idle session.
    def memory(case):
        """(bytes per session, detail, why not) of one idle-session run."""
        rep, meta = load(f"{out}/{case}.json"), load(f"{out}/{case}.meta.json")
        if not rep or not meta:
            return None, None, "no report"
        connected = rep.get("connected", 0)
        if connected <= 0:
            return None, None, "no session connected"
        lat = (rep.get("latency_us") or {}).get("connect") or {}
        d = dict(sessions=connected, clients=rep.get("clients"), failed=rep.get("connect_failed"),
                 rss_before_kib=meta["rss_before_kib"], rss_after_kib=meta["rss_after_kib"],
                 connect_max_us=lat.get("max"), errors=rep.get("errors", 0),
                 first_error=rep.get("first_error"), tls_version=rep.get("tls_version"))
        per = (meta["rss_after_kib"] - meta["rss_before_kib"]) * 1024 / connected
        why = None
        metrics = read_metrics(f"{out}/{case}.metrics.txt")
        if metrics:
            d["broker_connections"] = metrics.get("herald_connections")
            d["subscribes_refused"] = metrics.get('herald_acl_denied_total{action="subscribe"}', 0)
        if d.get("subscribes_refused"):
            why = f"{d['subscribes_refused']:,.0f} subscriptions refused"
        elif connected < 0.99 * rep.get("clients", connected):
            why = f"only {connected:,} of {rep.get('clients'):,} sessions connected"
        elif lat.get("max", 0) > meta.get("read_after_secs", settle) * 1e6:
            why = (f"the last connects took {fmt_ms(lat['max'] / 1000)}, longer than the "
                   f"{meta.get('read_after_secs', settle):g} s the memory reading waits")
        return per, d, why

    for label, h_case, m_case, limit in (
            ("plain, no subscription", "mem-herald", "mem-mosquitto", 1.0),
            ("plain, one subscription each", "mem-sub-herald", "mem-sub-mosquitto", 1.0),
            ("TLS, no subscription", "tls-herald", "tls-mosquitto", 0.5)):
        h, hd, hwhy = memory(h_case)
        m, md, mwhy = memory(m_case)
        n = (hd or md or {}).get("clients")
        goal = f"1. Memory per idle session, {label} ({num(n)} sessions)"
        target = f"≤ {limit:.1f}×"
        if h is None or m is None or m <= 0 or hwhy or mwhy:
            why = "; ".join(w for w in (hwhy and f"Herald: {hwhy}", mwhy and f"Mosquitto: {mwhy}") if w)
            add(goal, target, fmt_b(h), fmt_b(m), "–", f"not measured ({why or 'no reference'})",
                herald_detail=hd, reference_detail=md)
            continue
        ratio = h / m
        add(goal, target, fmt_b(h), fmt_b(m), f"{ratio:.2f}×", "**met**" if ratio <= limit else "**missed**",
            herald_bytes=h, reference_bytes=m, herald_detail=hd, reference_detail=md)
        def rss(name, x):
            extra = [f"{x['errors']:,} client errors (first: {x['first_error']})"] if x["errors"] else []
            if x.get("tls_version"):
                extra.append(x["tls_version"])
            if x.get("broker_connections") is not None:
                extra.append(f"herald_connections {x['broker_connections']:,.0f} at the reading")
            return (f"{name} RSS {x['rss_before_kib'] / 1024:.1f} → {x['rss_after_kib'] / 1024:.1f} MiB for "
                    f"{x['sessions']:,} sessions" + (f" ({', '.join(extra)})" if extra else ""))

        details.append(f"{label}: {rss('Herald', hd)}, {rss('Mosquitto', md)}")

    # 2. CPU per message, fan-in: the median of the rounds (the brokers' order alternating).
    rounds = range(1, int(run.get("cpu_rounds", "1")) + 1)
    per_round = []
    for qos in (0, 1):
        for rate in run.get("cpu_rates", "").split():
            r = {}
            for b in ("herald", "mosquitto"):
                cpus, p99s, delivered = [], [], []
                for k in rounds:
                    sub = load(f"{out}/{b}-fanin-q{qos}-{rate}-r{k}-sub.json")
                    meta = load(f"{out}/{b}-fanin-q{qos}-{rate}-r{k}.meta.json")
                    if sub and meta and "broker_cpu_secs" in meta:
                        e2e = (sub.get("latency_us") or {}).get("e2e") or {}
                        offered = float(rate) * float(run.get("duration", "20"))
                        cpus.append(meta["broker_cpu_secs"])
                        if e2e.get("p99") is not None:
                            p99s.append(e2e["p99"])
                        delivered.append(sub["received"] / max(offered, 1))
                if cpus:
                    r[b] = dict(cpu=statistics.median(cpus), p99=statistics.median(p99s) if p99s else None,
                                delivered=min(delivered), rounds=cpus)
            if len(r) == 2 and len(rounds) > 1:
                per_round.append(f"QoS {qos} at {int(rate):,} msg/s: Herald "
                                 + " / ".join(f"{c:.2f}" for c in r["herald"]["rounds"]) + ", Mosquitto "
                                 + " / ".join(f"{c:.2f}" for c in r["mosquitto"]["rounds"]) + " CPU-s")
            goal = f"2. CPU per message, fan-in QoS {qos}, {int(rate):,} msg/s"
            target = "≤ 1.0×, p99 no worse"
            if "herald" not in r or "mosquitto" not in r or r["mosquitto"]["cpu"] <= 0:
                add(goal, target, "–", "–", "–", "not measured (no report)")
                continue
            h, m = r["herald"], r["mosquitto"]

            def cell(x):
                return (f"{x['cpu']:.2f} CPU-s, p99 {fmt_ms((x['p99'] or 0) / 1000)}"
                        + (f", {100 * x['delivered']:.1f} % delivered" if x["delivered"] < 0.99 else ""))

            ratio = h["cpu"] / m["cpu"]
            p99_ok = h["p99"] is not None and m["p99"] is not None and h["p99"] <= m["p99"]
            verdict = ("**met**" if ratio <= 1.0 and p99_ok and h["delivered"] >= 0.99 else
                       "**missed**" + ("" if ratio > 1.0 else " (p99 worse)" if not p99_ok else " (< 99 % delivered)"))
            add(goal, target, cell(h), cell(m), f"{ratio:.2f}× (p99 {(h['p99'] or 0) / max(m['p99'] or 1, 1):.2f}×)",
                verdict, herald_detail=h, reference_detail=m)

    if per_round:
        details.append(f"CPU per round ({len(rounds)} rounds, Herald first in odd rounds, Mosquitto first in "
                       "even ones; the table shows medians of CPU-seconds and of p99): " + "; ".join(per_round))
    idle = {}
    for b in ("herald", "mosquitto"):
        values = [x["idle_cpu_per_sec"] for k in rounds
                  if (x := load(f"{out}/{b}-idle-r{k}.json")) and x.get("idle_cpu_per_sec") is not None]
        idle[b] = statistics.median(values) if values else None
    if idle["herald"] is not None and idle["mosquitto"] is not None:
        dur = float(run.get("duration", "20"))
        details.append(f"CPU while idle, included in the fan-in CPU-seconds: Herald {idle['herald']:.3f}, "
                       f"Mosquitto {idle['mosquitto']:.3f} CPU-s per second (about "
                       f"{idle['herald'] * (dur + 2):.2f} and {idle['mosquitto'] * (dur + 2):.2f} CPU-s "
                       f"over a {dur:g} s run)")

    # 3. Kafka hop.
    up = load(f"{out}/uplink.json")
    perf = parse_perf(f"{out}/perf-2.log")
    perf_warm = parse_perf(f"{out}/perf-1.log")
    ack = ((up or {}).get("latency_us") or {}).get("ack")
    if up and ack and perf:
        h50, h99, h999 = ack["p50"] / 1000, ack["p99"] / 1000, ack["p999"] / 1000
        j50, j99, j999 = perf["p50_ms"], perf["p99_ms"], perf["p999_ms"]
        acked = f"{up['acked']:,} of {up['published']:,} PUBACKed"
        ratio = h99 / max(j99, 0.001)
        add("3. Kafka hop: PUBACK p99 against the Java producer's p99, 5,000 msg/s", "≤ 1.5×",
            f"{fmt_ms(h99)} ({acked})", f"{fmt_ms(j99)} ({perf['records']:,} records, {perf['rate']:,.0f}/s)",
            f"{ratio:.2f}×", "**met**" if ratio <= 1.5 else "**missed**",
            herald_ms=h99, reference_ms=j99)
        diff = h50 - j50
        add("3. Kafka hop: PUBACK p50 against the Java producer's p50", "≤ +1 ms",
            fmt_ms(h50), fmt_ms(j50), f"{diff:+.2f} ms", "**met**" if diff <= 1.0 else "**missed**",
            herald_ms=h50, reference_ms=j50)
        add("3. Kafka hop: p99.9 (reported, no goal)", "–", fmt_ms(h999), fmt_ms(j999),
            f"{h999 / max(j999, 0.001):.2f}×", "reported", herald_ms=h999, reference_ms=j999)
        if perf_warm:
            details.append(f"Java producer warm-up run (not compared): p50 {fmt_ms(perf_warm['p50_ms'])}, "
                           f"p99 {fmt_ms(perf_warm['p99_ms'])}, p99.9 {fmt_ms(perf_warm['p999_ms'])}")
        details.append("The Java producer's latencies are differences of two millisecond clock readings "
                       "(`System.currentTimeMillis`), each off by up to 1 ms, and its percentiles whole "
                       "milliseconds: read them ± 0.5 ms. They count from its `send()` call; Herald's PUBACK "
                       "latency counts from the publish's scheduled time and includes the MQTT hop both ways")
    else:
        add("3. Kafka hop: PUBACK against Kafka's Java producer, 5,000 msg/s", "p99 ≤ 1.5×, p50 ≤ +1 ms",
            fmt_ms(ack and ack["p99"] / 1000), fmt_ms(perf and perf["p99_ms"]), "–",
            "not measured (" + ("no uplink report" if not (up and ack) else "no ProducerPerformance result") + ")")

    # 4. Authenticated connects per second on one core.
    c = {}
    for b in ("herald", "mosquitto"):
        rep, meta = load(f"{out}/connect-{b}.json"), load(f"{out}/connect-{b}.meta.json")
        if not rep or not meta or not rep.get("connected"):
            continue
        lat = (rep.get("latency_us") or {}).get("connect") or {}
        phase = rep["clients"] / rep["connect_rate"]
        cpu = meta.get("cpu_secs_net", meta["cpu_secs"])
        window = busy = None
        samples = read_samples(f"{out}/connect-{b}.cpu.txt")
        if samples and "start_unix" in meta:
            # The broker's CPU time from the start of the fleet to its last CONNACK (at most the
            # connect phase plus the largest connect latency, plus 0.5 s for the load generator's
            # own start), less its idle use over as long.
            t0 = meta["start_unix"]
            window = rep["clients"] / rep["connect_rate"] + lat.get("max", 0) / 1e6 + 0.5
            used = (ticks_at(samples, t0 + window) - ticks_at(samples, t0)) / meta.get("hz", 100)
            cpu = max(used - meta.get("idle_cpu_per_sec", 0) * window, 1e-3)
            busy = used / window
        c[b] = dict(connected=rep["connected"], clients=rep["clients"], failed=rep["connect_failed"],
                    offered=rep["connect_rate"], cpu=cpu, cpu_gross=meta["cpu_secs"], window_s=window, busy=busy,
                    idle_cpu_per_sec=meta.get("idle_cpu_per_sec"),
                    per_cpu_s=rep["connected"] / max(cpu, 1e-9),
                    # the last CONNACK came at most phase + max latency after the start
                    achieved=rep["connected"] / (phase + lat.get("max", 0) / 1e6),
                    p99_us=lat.get("p99"), max_us=lat.get("max"),
                    read_after_s=meta.get("read_after_secs", settle))
    goal = "4. Authenticated connects per second on one core"
    if "herald" in c and "mosquitto" in c:
        h, m = c["herald"], c["mosquitto"]

        def cell(x):
            return (f"{x['per_cpu_s']:,.0f} per CPU-s ({x['connected']:,} in {x['cpu']:.2f} CPU-s"
                    + (f" over {x['window_s']:.1f} s, its core {100 * x['busy']:.0f} % busy"
                       if x["window_s"] else "") + ", idle use left out; "
                    f"≥ {x['achieved']:,.0f}/s achieved at {x['offered']:,.0f}/s offered, "
                    f"p99 {fmt_ms((x['p99_us'] or 0) / 1000)}"
                    + (f", {x['failed']:,} failed" if x["failed"] else "") + ")")

        ratio = h["per_cpu_s"] / max(m["per_cpu_s"], 1e-9)
        ok = ratio >= 1.0 and h["failed"] == 0
        late = [name for name, x in (("Herald", h), ("Mosquitto", m))
                if (x["max_us"] or 0) > x["read_after_s"] * 1e6 or x["connected"] < 0.99 * x["clients"]]
        verdict = ("**met**" if ok else "**missed**") if not late else (
            f"not measured ({' and '.join(late)}: not all connected by the time CPU was read)")
        add(goal, "≥ 1.0×", cell(h), cell(m), f"{ratio:.2f}×", verdict, herald_detail=h, reference_detail=m)
    else:
        add(goal, "≥ 1.0×", "–", "–", "–", "not measured (no report)")

    with open(f"{out}/ratios.json", "w") as f:
        json.dump(summary, f, indent=1)
    if not docs:
        return 0

    lines = []
    w = lines.append
    w("<!-- Generated by `PARTS=pinned benches/compare.sh` from its JSON reports "
      "(target/bench/compare/pinned/): re-run the script rather than editing this block. -->")
    w("")
    w(f"**Command:** `{run.get('command')}` ({int(run.get('elapsed', '0')) // 60} minutes). "
      f"**Date:** {run.get('date')}. **Machine:** {run.get('nproc')} vCPU ({run.get('cpu')}), "
      f"{run.get('os')}, Linux {run.get('kernel')}, open-file limit {run.get('nofile')}; "
      f"rustc {run.get('rustc')}, release builds. **Versions:** Herald {run.get('herald')}, "
      f"Mosquitto {run.get('mosquitto')}, Kafka {run.get('kafka')} ({run.get('java')}). "
      f"**Pinning:** broker on CPU {run.get('pin_broker')}, load generator on CPU {run.get('pin_load')}, "
      f"Java producer on CPU {run.get('pin_java')}, Kafka unpinned; one broker at a time.")
    w("")
    w("| goal | Herald | reference | ratio | target | verdict |")
    w("|---|---|---|---|---|---|")
    for goal, herald, ref, ratio, target, verdict in rows:
        w(f"| {goal} | {herald} | {ref} | {ratio} | {target} | {verdict} |")
    w("")
    w("References: memory and connects, Mosquitto with a password file (one username for all "
      "clients); CPU, Mosquitto as in part A (anonymous); Kafka hop, Kafka's own Java producer "
      "(`ProducerPerformance`, acks=all, idempotent, linger 2 ms, 256-byte records; second of two "
      "runs). Herald in device mode (fleet-key passwords, Kafka) except for CPU (open mode, as in "
      "part A). Connects per CPU-s = sessions connected ÷ the broker's CPU time from the start "
      "of the fleet to its last CONNACK, less its idle use: what one core sustains when busy with "
      "nothing else. Where a broker's core was not saturated, the load generator (or a full listen "
      "backlog: connects retried after SYN retransmits) set the pace of the rate achieved.")
    if details:
        w("")
        for d in details:
            w(f"- {d}.")
    section = "\n".join(lines)
    text = open(doc).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{section}\n{END}{tail}"
    else:  # before the first section
        i = text.find("\n## ")
        block = f"\n## Headline: Herald against its references (issue #12)\n\n{BEGIN}\n{section}\n{END}\n"
        text = text + block if i < 0 else text[:i] + "\n" + block + text[i:]
    with open(doc, "w") as f:
        f.write(text)
    print(f"pinned.py: updated {doc}", file=sys.stderr)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tls-clients")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--ca", required=True)
    t.add_argument("-c", "--count", type=int, default=100)
    t.add_argument("-R", "--rate", type=float, default=100.0)
    t.add_argument("--hold", type=float, default=10.0)
    t.add_argument("--client-id", default="tls-%i")
    t.add_argument("--fleet-key")
    t.add_argument("-u", "--username")
    t.add_argument("-P", "--password")
    t.add_argument("--report")
    c = sub.add_parser("cpu-sampler")
    c.add_argument("--pid", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--interval", type=float, default=0.1)
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("doc")
    r.add_argument("--no-docs", action="store_true")
    args = p.parse_args()
    if args.cmd == "tls-clients":
        return asyncio.run(tls_clients(args))
    if args.cmd == "cpu-sampler":
        return cpu_sampler(args)
    return report(args.out, args.doc, not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
