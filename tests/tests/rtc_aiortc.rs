//! aiortc (PyPI), a WebRTC stack nobody here wrote, joins a channel with a Chromium tab of
//! `/demo` through the documented `/rtc` protocol and receives its audio, both ways round:
//! as the newcomer that offers a complete SDP, and as the peer already present that answers
//! Chromium's trickled offer. Needs scripts/rtc-test-deps.sh; fails, never skips, when its
//! dependencies are missing.

mod rtc_support;

use std::time::Duration;

use rtc_support::{
    Api, Script, node, positive, require_browser_deps, require_python, root, run_json,
};
use tokio::process::Command;

fn aiortc(python: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(python);
    c.arg(root().join("tests/aiortc/peer.py")).args(args);
    c
}

fn check(page: &serde_json::Value, py: &serde_json::Value) {
    eprintln!("page inbound {} / aiortc {py}", page["inbound"]);
    // aiortc received Chromium's (fake microphone) audio...
    assert_eq!(py["connectionState"], "connected", "{py:#}");
    positive(py, "/frames");
    positive(py, "/energy");
    positive(py, "/packetsReceived");
    // ...and Chromium received aiortc's 440 Hz tone.
    assert_eq!(page["inbound"]["connectionState"], "connected", "{page:#}");
    positive(page, "/inbound/packetsReceived");
    positive(page, "/inbound/totalAudioEnergy");
}

#[tokio::test]
async fn aiortc_and_chromium_talk_through_rtc() {
    require_browser_deps();
    let python = require_python();
    let api = Api::start().await;
    let limit = Duration::from_secs(120);

    // Chromium calls aiortc: the page joins first; once it is in, aiortc joins second (the
    // newcomer) and offers a complete SDP.
    let mut page = Script::spawn(
        node("one-page.mjs", &[&api.base, "web", "call", "py", "4"]),
        "one-page.mjs (call)",
    );
    page.ready(limit).await;
    let py = run_json(
        aiortc(
            &python,
            &[
                "--base",
                &api.base,
                "--uid",
                "py",
                "--wait",
                "--seconds",
                "4",
            ],
        ),
        "peer.py --wait",
        limit,
    );
    let (page, py) = tokio::join!(page.result(limit), py);
    assert_eq!(py["joined_peers"], serde_json::json!(["web"]), "{py:#}");
    // aiortc's offer carried its candidates (a complete SDP, no trickle), and Chromium took it.
    positive(&py, "/sdp_candidates_out");
    check(&page, &py);

    // aiortc calls Chromium: aiortc joins first, the page answers, joins second and offers
    // with trickled candidates, which aiortc accepts.
    let py = run_json(
        aiortc(
            &python,
            &[
                "--base",
                &api.base,
                "--uid",
                "py2",
                "--call",
                "web2",
                "--seconds",
                "4",
            ],
        ),
        "peer.py --call",
        limit,
    );
    let page = run_json(
        node("one-page.mjs", &[&api.base, "web2", "answer", "py2", "4"]),
        "one-page.mjs (answer)",
        limit,
    );
    let (page, py) = tokio::join!(page, py);
    assert_eq!(py["joined_peers"], serde_json::json!([]), "{py:#}");
    // Chromium's candidates arrived as trickled `signal` messages.
    positive(&py, "/trickled_in");
    check(&page, &py);
    api.stop().await;
}
