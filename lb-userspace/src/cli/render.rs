//! Plain-text answers for a terminal (`--json` prints the API's types instead).

use crate::api::types::{ChangeReport, Flows, Status, Trace};

fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

pub(super) fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn status(s: &Status) -> String {
    let mut out = String::new();
    for v in &s.vips {
        let c = &v.counters;
        out.push_str(&format!(
            "{} {} {} active={} split={} packets={} live_flows={}\n",
            v.name,
            v.address,
            json_name(&v.protocol),
            v.active,
            v.split
                .as_ref()
                .map_or_else(|| "-".to_string(), |s| format!("{}%->{}", s.percent, s.pool)),
            c.packets,
            or_null(c.live_flows)
        ));
        for p in &v.pools {
            out.push_str(&format!(
                "  pool {} ({}) live_flows={}\n",
                p.name,
                json_name(&p.role),
                or_null(p.counters.live_flows)
            ));
            for b in &p.backends {
                out.push_str(&format!(
                    "    {:<24} weight={:<5} admin={:<5} health={:<9} state={:<5} live_flows={:<6} packets={}\n",
                    b.address,
                    b.weight,
                    json_name(&b.admin),
                    json_name(&b.health),
                    json_name(&b.state),
                    or_null(b.counters.live_flows),
                    b.counters.packets
                ));
            }
        }
    }
    out
}

pub fn change(c: &ChangeReport) -> String {
    let mut out = String::new();
    for line in &c.changes {
        out.push_str(&format!("{line}\n"));
    }
    for (vip, pct) in &c.moved_pct {
        if c.dealt.contains(vip) {
            out.push_str(&format!(
                "{vip}: at least {pct:.2}% of new flows go to other backends (new flows are dealt, not hashed)\n"
            ));
        } else {
            out.push_str(&format!("{vip}: {pct:.2}% of new-flow hash space moves\n"));
        }
    }
    out.push_str(if c.applied {
        "applied\n"
    } else {
        "dry run: nothing changed\n"
    });
    out
}

pub fn flows(f: &Flows) -> String {
    let mut out = format!("{} flows of {}\n", f.total, f.vip);
    for r in &f.flows {
        out.push_str(&format!(
            "  {:<44} -> {:<24} nat_port={}{}\n",
            r.client,
            r.backend,
            r.nat_port,
            if r.closing { " closing" } else { "" }
        ));
    }
    out
}

pub fn table(t: &crate::api::types::Table) -> String {
    let mut out = format!(
        "VIP {} ({}), pool {}: {} slots, digest {}\n",
        t.vip, t.mode, t.pool, t.ring_size, t.digest
    );
    for (addr, n) in &t.slots {
        out.push_str(&format!(
            "  {addr:<40} {n:>6} slots  {:5.1}%\n",
            *n as f64 * 100.0 / t.ring_size.max(1) as f64
        ));
    }
    out
}

pub fn trace(t: &Trace) -> String {
    if t.existing_flow {
        format!(
            "{} -> {} (existing flow)\n",
            t.source,
            t.backend.as_deref().unwrap_or("?")
        )
    } else if t.backend.is_none() && !t.candidates.is_empty() {
        let how = match t.scheduler.as_deref() {
            Some("round-robin") => "round-robin: the next turn of the CPU it arrives on",
            _ => "least-conn: the one with fewer live flows per unit of weight when it arrives",
        };
        format!(
            "{} -> one of {} (new flow: pool {}, {how})\n",
            t.source,
            t.candidates.join(", "),
            t.pool.as_deref().unwrap_or(""),
        )
    } else {
        format!(
            "{} -> {} (new flow: pool {}, slot {})\n",
            t.source,
            t.backend.as_deref().unwrap_or("none"),
            t.pool.as_deref().unwrap_or(""),
            or_null(t.slot)
        )
    }
}
