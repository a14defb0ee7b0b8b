'use strict';
// RocketMQ throughput through polymq with the ali-ons client (installed by `make node-deps`):
//   node bench/rocketmq/bench.js <nameSrv> [messages=5000] [bodyBytes=256] [concurrency=16]
// Sends <messages> from <concurrency> concurrent send loops (each send is answered once the
// message is durable), while one push consumer of a new group reads them; prints one JSON line.
const path = require('path');
const ons = require(require.resolve('ali-ons', { paths: [ path.join(__dirname, '../../tests/rocketmq') ] }));

const silent = { info() {}, warn() {}, debug() {}, error() {} };
const [ nameSrv, nArg, sizeArg, concArg ] = process.argv.slice(2);
const total = Number(nArg || 5000);
const size = Number(sizeArg || 256);
const concurrency = Number(concArg || 16);
const topic = `bench${Date.now()}`;

async function main() {
  const consumer = new ons.Consumer({ nameSrv, httpclient: {}, consumerGroup: `${topic}-g`, logger: silent,
    rebalanceInterval: 1000, pullBatchSize: 32, parallelConsumeLimit: 32 });
  const producer = new ons.Producer({ nameSrv, httpclient: {}, producerGroup: `${topic}-p`, logger: silent });
  await producer.ready();
  await producer.send(new ons.Message(topic, 'warm', Buffer.from('warm')));  // creates the topic
  let received = 0;
  let ready;
  const readyP = new Promise(r => { ready = r; });
  let done;
  const doneP = new Promise(r => { done = r; });
  consumer.on(`topic_${topic}_queue_changed`, () => setTimeout(ready, 500));
  consumer.subscribe(topic, 'bench', async () => { if (++received === total) done(); });
  await readyP;
  const body = Buffer.alloc(size, 'x');
  const sendLat = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++;
      const s = process.hrtime.bigint();
      await producer.send(new ons.Message(topic, 'bench', body));
      sendLat.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  }));
  const t1 = process.hrtime.bigint();
  await doneP;
  const t2 = process.hrtime.bigint();
  sendLat.sort((a, b) => a - b);
  const pct = p => sendLat[Math.min(sendLat.length - 1, Math.floor(p * sendLat.length))].toFixed(2);
  console.log(JSON.stringify({
    messages: total, body_bytes: size, concurrency,
    send_msgs_per_s: Math.round(total / (Number(t1 - t0) / 1e9)),
    end_to_end_msgs_per_s: Math.round(total / (Number(t2 - t0) / 1e9)),
    send_latency_ms: { p50: pct(0.5), p99: pct(0.99) },
  }));
  await producer.close();
  await consumer.close();
  process.exit(0);
}
main().catch(err => { console.error(err); process.exit(1); });
