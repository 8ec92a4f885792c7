// One tab of /demo calls the robot: goes online, clicks "Call the robot", waits until the
// connection to the robot is up, listens for `seconds`, and reads the inbound audio stats.
//   node robot-page.mjs http://127.0.0.1:PORT [seconds]
// Prints {inbound: {...}, shown: {...}, after_hangup: {...}} as one JSON line.
import { inboundAudio, launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const base = process.argv[2];
const seconds = Number(process.argv[3] || 3);

run(async () => {
  const browser = await launch();
  try {
    const page = await openDemo(browser.context, base, "web");
    await page.click("#robot");
    await waitConnected(page, "robot", 30000);
    await page.waitForTimeout(seconds * 1000);
    const result = { inbound: await inboundAudio(page, "robot"), shown: await shown(page) };
    await page.click("#hangup");
    result.after_hangup = await shown(page);
    return result;
  } finally {
    await browser.close();
  }
});
