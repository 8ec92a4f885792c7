// rtc.js: a small client for the /rtc channel of the dapi server. Copy it into your app.
//
// The protocol (docs/rtc-protocol.md): open a WebSocket to /rtc, send
//   {"type":"join","appID","channel","uid","token"}   (the four values come from /dapi)
// and receive {"type":"joined","peers":[...],"ice_servers":[...]}. Media flows peer to
// peer: the newcomer offers to every peer listed in `joined`, a peer already present
// answers. SDP and ICE candidates travel as {"type":"signal","to":uid,...} and arrive as
// {"type":"signal","from":uid,...}. Candidates trickle; a complete SDP (candidates inside,
// as aiortc or the robot send it) works too.
//
// Each pair of peers runs "perfect negotiation" (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example):
// the peer that was already in the channel is polite (it yields on an offer collision), the
// newcomer is impolite. That keeps renegotiation (adding a track later) glare-free.
//
// Usage:
//   import { RtcChannel } from "./rtc.js";
//   const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
//   const ch = new RtcChannel({ url: "wss://host/rtc", appID, channel, uid, token, stream,
//     // Tokens expire (10 min by default): the server sends `token_expiring` 30 s before,
//     // and this is asked for a fresh token for the same channel and uid (sent as `renew`).
//     renewToken: async () => (await postDapi("call/token", { uid, channel })).token });
//   ch.addEventListener("track", (e) => { audioElement.srcObject = e.detail.streams[0]; });
//   ch.addEventListener("peerstate", (e) => console.log(e.detail.uid, e.detail.state));
//   await ch.join();          // resolves with the `joined` message, rejects with the error
//   ...
//   ch.leave();
//
// Events (CustomEvent, data in `detail`):
//   joined {channel, uid, peers}   peerjoined {uid}   peerleft {uid, reason}
//   peerstate {uid, state}         track {uid, track, streams}
//   error {code, message}          kicked {reason}    closed {code, reason}
//   tokenexpiring {}               renewed {}

/** One channel membership over one WebSocket. */
export class RtcChannel extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.url      WebSocket URL of /rtc (ws:// or wss://)
   * @param {string} o.appID    from the /dapi response
   * @param {string} o.channel  from the /dapi response
   * @param {string} o.uid      from the /dapi response (a string)
   * @param {string} o.token    from the /dapi response
   * @param {MediaStream} [o.stream]  local media to send; without an audio track, audio is received only
   * @param {() => Promise<string>} [o.renewToken]  a fresh token for the same channel and uid
   *        (e.g. from POST /dapi/call/token), asked for on `token_expiring`; without it the
   *        server kicks the socket (reason `token_expired`) when the token expires
   */
  constructor({ url, appID, channel, uid, token, stream = null, renewToken = null }) {
    super();
    this.url = url;
    this.appID = appID;
    this.channel = channel;
    this.uid = String(uid);
    this.token = token;
    this.stream = stream;
    this.renewToken = renewToken;
    this.iceServers = [];
    /** @type {Map<string, {uid: string, pc: RTCPeerConnection, polite: boolean, makingOffer: boolean, ignoreOffer: boolean}>} */
    this.peers = new Map();
    this.ws = null;
    this.queue = Promise.resolve();
  }

  /** Opens the socket and joins. Resolves with the `joined` message. */
  join() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => {
        this.#send({ type: "join", appID: this.appID, channel: this.channel, uid: this.uid, token: this.token });
      };
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (!settled && msg.type === "joined") {
          settled = true;
          resolve(msg);
        } else if (!settled && msg.type === "error") {
          settled = true;
          reject(Object.assign(new Error(msg.message), { code: msg.code }));
        }
        // One message at a time, in arrival order: an answer is set before its candidates.
        this.queue = this.queue
          .then(() => this.#onMessage(msg))
          .catch((e) => this.#emit("error", { code: "client", message: String(e) }));
      };
      ws.onclose = (ev) => {
        this.#closeAll();
        if (!settled) {
          settled = true;
          reject(Object.assign(new Error(`socket closed (${ev.code})`), { code: "closed" }));
        }
        this.#emit("closed", { code: ev.code, reason: ev.reason });
      };
    });
  }

  /** Leaves the channel; the server tells the others and closes the socket. */
  leave() {
    this.#send({ type: "leave" });
    for (const uid of [...this.peers.keys()]) this.#dropPeer(uid);
    // The server closes the socket after `leave`; close it ourselves if it does not.
    const ws = this.ws;
    setTimeout(() => ws && ws.close(), 1000);
  }

  // ------------------------------------------------------------------ protocol

  async #onMessage(msg) {
    switch (msg.type) {
      case "joined":
        this.iceServers = msg.ice_servers || [];
        this.#emit("joined", { channel: msg.channel, uid: msg.uid, peers: msg.peers });
        // The offer rule: the newcomer offers to every peer already present.
        for (const uid of msg.peers) this.#createPeer(uid, { polite: false });
        break;
      case "peer_joined":
        // A newcomer (or a replacement socket of a uid we knew) will send us an offer.
        this.#dropPeer(msg.uid);
        this.#emit("peerjoined", { uid: msg.uid });
        break;
      case "peer_left":
        this.#dropPeer(msg.uid);
        this.#emit("peerleft", { uid: msg.uid, reason: msg.reason });
        break;
      case "signal":
        await this.#onSignal(msg);
        break;
      case "error":
        this.#emit("error", { code: msg.code, message: msg.message });
        break;
      case "kicked":
        this.#emit("kicked", { reason: msg.reason });
        this.#closeAll();
        break;
      case "token_expiring":
        this.#emit("tokenexpiring", {});
        // Not awaited: signals keep flowing while the token is fetched.
        this.#renew();
        break;
    }
  }

  /** Fetches a fresh token and sends `renew`; a refused one arrives as an `error`. */
  async #renew() {
    if (!this.renewToken) return;
    try {
      const token = await this.renewToken();
      this.token = token;
      this.#send({ type: "renew", token });
      this.#emit("renewed", {});
    } catch (e) {
      this.#emit("error", { code: "renew_failed", message: String(e) });
    }
  }

  async #onSignal({ from, description, candidate }) {
    let peer = this.peers.get(from);
    if (!peer) {
      // An offer from someone we have no connection with: they are the newcomer, we answer.
      if (!description || description.type !== "offer") return;
      peer = this.#createPeer(from, { polite: true });
    }
    const pc = peer.pc;
    if (description) {
      const collision = description.type === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return;
      await pc.setRemoteDescription(description); // a polite peer rolls back its own offer implicitly
      if (description.type === "offer") {
        await pc.setLocalDescription();
        this.#send({ type: "signal", to: from, description: pc.localDescription.toJSON() });
      }
    } else if (candidate !== undefined) {
      try {
        // null (or an empty candidate) means the sender has no more candidates.
        await pc.addIceCandidate(candidate === null ? undefined : candidate);
      } catch (e) {
        if (!peer.ignoreOffer) throw e;
      }
    }
  }

  #createPeer(uid, { polite }) {
    this.#dropPeer(uid);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const peer = { uid, pc, polite, makingOffer: false, ignoreOffer: false };
    this.peers.set(uid, peer);

    pc.onicecandidate = ({ candidate }) => {
      this.#send({ type: "signal", to: uid, candidate: candidate ? candidate.toJSON() : null });
    };
    pc.onnegotiationneeded = async () => {
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        this.#send({ type: "signal", to: uid, description: pc.localDescription.toJSON() });
      } catch (e) {
        this.#emit("error", { code: "client", message: `offer to ${uid} failed: ${e}` });
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.ontrack = ({ track, streams }) => this.#emit("track", { uid, track, streams });
    pc.onconnectionstatechange = () => this.#emit("peerstate", { uid, state: pc.connectionState });

    const tracks = this.stream ? this.stream.getTracks() : [];
    for (const track of tracks) pc.addTrack(track, this.stream);
    if (!tracks.some((t) => t.kind === "audio") && !polite) {
      // Nothing to send: still offer to receive audio.
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    this.#emit("peerstate", { uid, state: pc.connectionState });
    return peer;
  }

  #dropPeer(uid) {
    const peer = this.peers.get(uid);
    if (!peer) return;
    this.peers.delete(uid);
    peer.pc.close();
    this.#emit("peerstate", { uid, state: "closed" });
  }

  #closeAll() {
    for (const uid of [...this.peers.keys()]) this.#dropPeer(uid);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
  }

  #send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** The /rtc URL next to a page served by the API (http -> ws, https -> wss). */
export function rtcUrl(base = location.href) {
  const u = new URL("/rtc", base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}
