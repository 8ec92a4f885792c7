// Two tabs of /demo: alice calls bob, bob answers; both must receive the other's audio.
//   node two-pages.mjs http://127.0.0.1:PORT [seconds]
// Prints {alice: {...inbound audio from bob}, bob: {...}, shown: {...}} as one JSON line.
import { inboundAudio, launch, openDemo, run, shown, waitConnected } from "./lib.mjs";

const base = process.argv[2];
const seconds = Number(process.argv[3] || 4);

run(async () => {
  const browser = await launch();
  try {
    const bob = await openDemo(browser.context, base, "bob");
    const alice = await openDemo(browser.context, base, "alice");
    await alice.fill("#callee", "bob");
    await alice.click("#call");
    // Bob's tab polls call/msg every 2 s and shows the incoming call.
    await bob.waitForSelector("#incoming:not([hidden])", { timeout: 15000 });
    await bob.click("#answer");
    await waitConnected(alice, "bob");
    await waitConnected(bob, "alice");
    await alice.waitForTimeout(seconds * 1000);
    const result = {
      alice: await inboundAudio(alice, "bob"),
      bob: await inboundAudio(bob, "alice"),
      shown: { alice: await shown(alice), bob: await shown(bob) },
    };
    await alice.click("#hangup");
    await bob.waitForSelector('#peers tr[data-uid="alice"]', { state: "detached", timeout: 5000 });
    result.after_hangup = { bob: await shown(bob) };
    return result;
  } finally {
    await browser.close();
  }
});
