//! Headless Chromium (Debian's, through playwright-core) opens two tabs of `/demo` against
//! the real `api` binary: alice calls bob, bob answers, and each hears the other (inbound
//! audio packets and audio energy above zero, from `getStats()`). Needs
//! scripts/rtc-test-deps.sh; fails, never skips, when its dependencies are missing.

mod rtc_support;

use std::time::Duration;

use rtc_support::{Api, node, positive, require_browser_deps, run_json};

#[tokio::test]
async fn two_demo_tabs_call_each_other_and_hear_each_other() {
    require_browser_deps();
    let api = Api::start().await;
    let out = run_json(
        node("two-pages.mjs", &[&api.base, "4"]),
        "two-pages.mjs",
        Duration::from_secs(120),
    )
    .await;
    eprintln!("two-pages.mjs: alice {} / bob {}", out["alice"], out["bob"]);
    for side in ["alice", "bob"] {
        assert_eq!(out[side]["connectionState"], "connected", "{out:#}");
        positive(&out, &format!("/{side}/packetsReceived"));
        positive(&out, &format!("/{side}/totalAudioEnergy"));
    }
    // The page shows who is in the channel and the connection state.
    assert_eq!(
        out["shown"]["alice"]["peers"],
        serde_json::json!([["bob", "connected"]]),
        "{out:#}"
    );
    assert_eq!(
        out["shown"]["bob"]["peers"],
        serde_json::json!([["alice", "connected"]]),
        "{out:#}"
    );
    // Alice hung up: bob's page no longer lists her.
    assert_eq!(
        out["after_hangup"]["bob"]["peers"],
        serde_json::json!([]),
        "{out:#}"
    );
    api.stop().await;
}
