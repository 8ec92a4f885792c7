// One tab of /demo calls the robot and steers it with the page's robot controls: Pause,
// Resume, the volume slider and Skip. After each it reads the state the page shows and the
// robot's inbound packets (getStats() counts move about once a second, so each phase lasts
// over a second).
//   node controls-page.mjs http://127.0.0.1:PORT
// Prints {paused, resumed, gain, skipped: {state, packets_before, packets_after}, ...}.
import { inboundAudio, launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const base = process.argv[2];

run(async () => {
  const browser = await launch();
  try {
    const page = await openDemo(browser.context, base, "web-steer");
    await page.click("#robot");
    await waitConnected(page, "robot", 30000);
    await page.waitForSelector("#robot-controls:not([hidden])", { timeout: 10000 });
    await page.waitForTimeout(1000);
    const packets = async () => (await inboundAudio(page, "robot")).packetsReceived;
    const stateAfter = async (click) => {
      const before = await page.textContent("#rc-state");
      await click();
      await page.waitForFunction((b) => document.querySelector("#rc-state").textContent !== b, before, { timeout: 5000 });
      return page.textContent("#rc-state");
    };
    // Each phase: the control, 1.5 s for it to settle, then the packets over 2 s.
    const phase = async (click) => {
      const state = await stateAfter(click);
      await page.waitForTimeout(1500);
      const packets_before = await packets();
      await page.waitForTimeout(2000);
      return { state, packets_before, packets_after: await packets() };
    };
    const result = {};
    result.paused = await phase(() => page.click("#rc-pause"));
    result.resumed = await phase(() => page.click("#rc-resume"));
    result.gain = await stateAfter(async () => {
      await page.fill("#rc-gain", "-6");
      await page.dispatchEvent("#rc-gain", "change");
    });
    result.skipped = await phase(() => page.click("#rc-skip"));
    result.shown = await shown(page);
    await page.click("#hangup");
    return result;
  } finally {
    await browser.close();
  }
});
