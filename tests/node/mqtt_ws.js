// MQTT over WebSocket with the `mqtt` npm package (MQTT.js).
// Usage: node mqtt_ws.js <ws url> <topic> <protocolVersion 4|5>
// Subscribes to <topic>, publishes a QoS 1 message to it, prints one JSON line per event.
const mqtt = require("mqtt");

const [url, topic, version] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const client = mqtt.connect(url, {
  protocolVersion: Number(version),
  clientId: `mqttjs-${process.pid}`,
  username: "guest",
  password: "guest",
  reconnectPeriod: 0,
});
client.on("connect", (ack) => {
  out({ event: "connected" });
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) { out({ event: "error", message: String(err) }); process.exit(2); }
    client.publish(topic, Buffer.from([0, 1, 2, 255]), { qos: 1 }, (err2) => {
      out({ event: err2 ? "error" : "puback", message: String(err2 || "") });
    });
  });
});
client.on("message", (t, payload) => {
  out({ event: "message", topic: t, body: payload.toString("base64") });
  client.end(false, {}, () => { out({ event: "closed" }); process.exit(0); });
});
client.on("error", (e) => { out({ event: "error", message: String(e.message || e) }); process.exit(3); });
setTimeout(() => { out({ event: "timeout" }); process.exit(4); }, 20000);
