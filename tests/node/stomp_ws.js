// STOMP over WebSocket with @stomp/stompjs (the browser client, here on Node.js with `ws`).
// Usage: node stomp_ws.js <ws url> <queue>
// Subscribes to /queue/<queue> with client-individual acks, sends a text and a binary message
// with headers and a receipt, acknowledges what arrives, and prints one JSON line per event.
const { Client } = require("@stomp/stompjs");
const WebSocket = require("ws");

const [url, queue] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const dest = `/queue/${queue}`;
let got = 0;

const client = new Client({
  brokerURL: url,
  webSocketFactory: () => new WebSocket(url, ["v12.stomp", "v11.stomp", "v10.stomp"]),
  connectHeaders: { login: "guest", passcode: "guest" },
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  reconnectDelay: 0,
  onStompError: (frame) => { out({ event: "error", message: frame.headers.message }); process.exit(2); },
  onWebSocketError: (e) => { out({ event: "wserror", message: String(e.message || e) }); process.exit(3); },
});

client.onConnect = (frame) => {
  out({ event: "connected", version: frame.headers.version, heartBeat: frame.headers["heart-beat"] });
  client.subscribe(dest, (m) => {
    got += 1;
    out({
      event: "message",
      body: m.isBinaryBody ? Buffer.from(m.binaryBody).toString("base64") : Buffer.from(m.body).toString("base64"),
      headers: m.headers,
    });
    m.ack();
    if (got === 2) {
      client.deactivate().then(() => { out({ event: "closed" }); process.exit(0); });
    }
  }, { ack: "client-individual" });
  const receiptId = "r-text";
  client.watchForReceipt(receiptId, () => out({ event: "receipt", id: receiptId }));
  client.publish({
    destination: dest,
    body: "héllo from stompjs",
    headers: { "x-from": "stompjs", "content-type": "text/plain", receipt: receiptId },
  });
  client.publish({
    destination: dest,
    binaryBody: new Uint8Array([0, 1, 2, 255, 0, 10]),
    headers: { "content-type": "application/octet-stream" },
  });
};

setTimeout(() => { out({ event: "timeout" }); process.exit(4); }, 20000);
client.activate();
