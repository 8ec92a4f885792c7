// One tab of /demo leaves a voicemail: goes online, calls a uid that never answers with
// "Leave a voicemail"; after the page's 12 s the robot is invited with `record`, greets,
// beeps and records the fake microphone (Chromium's beeping test source) for `seconds`;
// the page hangs up (the robot stops recording on the leave, uploads and leaves), lists
// its recordings and plays the newest one.
//   node voicemail-page.mjs http://127.0.0.1:PORT [seconds]
// Prints {recordings: [...], played_s, shown} as one JSON line.
import { launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const base = process.argv[2];
const seconds = Number(process.argv[3] || 4);

run(async () => {
  const browser = await launch();
  try {
    const page = await openDemo(browser.context, base, "web-caller");
    await page.fill("#callee", "nobody-home");
    await page.click("#voicemail");
    await waitConnected(page, "robot", 40000);
    // The greeting and the beep: the robot's audio stops when it starts recording. Polled
    // here, not with waitForFunction: an async predicate returns a Promise, which
    // waitForFunction takes as truthy at once (it hung up during the greeting).
    const packets = () => page.evaluate(async () => {
      const p = window.rtcDemo.channel()?.peers.get("robot");
      if (!p) return 0;
      let n = 0;
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") n = s.packetsReceived || 0;
      });
      return n;
    });
    let last = -1;
    let since = Date.now();
    const until = Date.now() + 60000;
    for (;;) {
      const n = await packets();
      if (n !== last) {
        last = n;
        since = Date.now();
      } else if (n > 0 && Date.now() - since > 1500) {
        break; // no new packet for 1.5 s (getStats() counts move about once a second)
      }
      if (Date.now() > until) throw new Error(`the robot's greeting never ended (${n} packets)`);
      await page.waitForTimeout(100);
    }
    await page.waitForTimeout(seconds * 1000);
    await page.click("#hangup");
    // the upload lands once the robot has left
    let rows = [];
    for (let i = 0; i < 60 && rows.length === 0; i++) {
      await page.waitForTimeout(500);
      await page.click("#recordings-refresh");
      await page.waitForTimeout(300);
      rows = await page.$$eval("#recordings tr", (trs) => trs.map((t) => t.children[2].textContent));
    }
    const played = await page.evaluate(async () => {
      const a = document.querySelector("#recordings tr:last-child audio");
      if (!a) return -1;
      a.muted = true;
      await a.play();
      await new Promise((r) => setTimeout(r, 1500));
      return a.currentTime;
    });
    return { recordings: rows, played_s: played, shown: await shown(page) };
  } finally {
    await browser.close();
  }
});
