// One tab of /demo, for the aiortc test. Either calls `callee` or waits for a call and answers.
//   node one-page.mjs http://127.0.0.1:PORT UID call CALLEE [seconds]
//   node one-page.mjs http://127.0.0.1:PORT UID answer CALLER [seconds]
// In call mode it first prints {"ready":"joined"} once the page is in the channel.
// Prints {inbound: {...audio from the other side}, shown: {...}} as its last JSON line.
import { inboundAudio, launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const [base, uid, mode, other] = process.argv.slice(2, 6);
const seconds = Number(process.argv[6] || 4);

run(async () => {
  const browser = await launch();
  try {
    const page = await openDemo(browser.context, base, uid);
    if (mode === "call") {
      await page.fill("#callee", other);
      await page.click("#call");
      // Tell the driver the page is in the channel, so the other side can join after it.
      await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("In "));
      console.log(JSON.stringify({ ready: "joined" }));
    } else {
      await page.waitForSelector("#incoming:not([hidden])", { timeout: 30000 });
      await page.click("#answer");
    }
    await waitConnected(page, other, 30000);
    await page.waitForTimeout(seconds * 1000);
    const result = { inbound: await inboundAudio(page, other), shown: await shown(page) };
    // Stay a little so the other side can take its own measurements.
    await page.waitForTimeout(3000);
    return result;
  } finally {
    await browser.close();
  }
});
