//! `sluice demo`, the README's first command: events reach each tenant's
//! SSE subscriber (and only its own), the demo tells a person how to watch
//! the same stream, and its logs carry no colour codes when stderr is not a
//! terminal.

mod common;

use std::process::Stdio;

use common::proc::sluice;
use serde_json::Value;

#[test]
fn demo_delivers_each_tenants_events_to_its_sse_subscriber_and_prints_how_to_watch() {
    let mut demo = sluice();
    // `sluice()` clears the test's SLUICE_ variables; the demo needs to
    // find the Postgres binaries as the README's command would.
    if let Some(bin) = std::env::var_os("SLUICE_PG_BIN") {
        demo.env("SLUICE_PG_BIN", bin);
    }
    let out = demo
        .arg("demo")
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run sluice demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    // Four changes of acme (insert, update, custom event, update) and two of
    // globex (insert, delete); the rolled-back insert never appears.
    let of = |t: &str| events.iter().filter(|e| e["tenant"] == t).count();
    assert_eq!(
        (of("acme"), of("globex"), events.len()),
        (4, 2, 6),
        "{stdout}"
    );
    assert!(events.iter().any(|e| e["type"] == "custom.order.shipped"));
    assert!(
        !events.iter().any(|e| e["data"]["new"]["total"] == "1.00"),
        "the rolled-back insert was delivered: {stdout}"
    );
    // Each subscriber received its events in seq order.
    for t in ["acme", "globex"] {
        let seqs: Vec<i64> = events
            .iter()
            .filter(|e| e["tenant"] == t)
            .map(|e| e["seq"].as_i64().expect("seq"))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{t}: {seqs:?}");
    }

    assert!(
        stderr.contains("curl -N 'http://127.0.0.1:") && stderr.contains("apikey=sk_anon_"),
        "no ready-to-paste curl command:\n{stderr}"
    );
    assert!(stderr.contains("EventSource"), "{stderr}");
    assert!(
        stderr.contains("http api listening"),
        "an info log line was expected:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in logs written to a pipe:\n{stderr}"
    );
    let page = std::env::temp_dir().join("sluice-demo.html");
    let html = std::fs::read_to_string(&page).expect("the demo writes its browser page");
    assert!(html.contains("new EventSource(") && html.contains("/v1/events/subscribe?apikey="));
}
