'use strict';
// Load client for `polymq compare` (RocketMQ): the ali-ons client (npm), driven line by line by
// plugins/compare/drivers/rocketmq.py over stdin/stdout.
//   node RocketMQLoad.js producer|consumer NAMESRV TOPIC N COUNT DURATION_S RATE SIZE PATTERN WINDOW LATFILE
// COUNT 0 = run for DURATION_S; RATE 0 = unlimited (per producer).
// stdout: READY, "P <n>" progress, IO (then waits for CLOSE on stdin), RESULT k=v ...
// stdin (consumer): EXPECT <n> <drain_s> once the producers are done; STOP to give up.
// Consumer LATFILE: per message the consumer's index (u32), the 16-byte body header, then the
// receive time (u64, ns). Each producer sends to one queue (its sharding key), keeping its order.
const crypto = require('crypto');
const fs = require('fs');
const readline = require('readline');
const { Producer, Consumer, Message } = require('ali-ons');

const [ role, nameSrv, topic, nArg, countArg, durArg, rateArg, sizeArg, pattern, windowArg, latFile ] =
  process.argv.slice(2);
const n = Number(nArg);
const count = Number(countArg);
const duration = Number(durArg);
const rate = Number(rateArg);
const size = Number(sizeArg);
const windowSize = Math.max(1, Number(windowArg));
const silent = { info() {}, warn() {}, debug() {}, error() {} };
const now = () => process.hrtime.bigint(); // CLOCK_MONOTONIC, as the Python side's
const errors = [];
let expect = -1;
let drainS = 10;
let stop = false;
let closeResolve;
const closed = new Promise(r => { closeResolve = r; });
const print = line => process.stdout.write(line + '\n');
const sleep = ms => new Promise(r => setTimeout(r, ms));

readline.createInterface({ input: process.stdin }).on('line', line => {
  const p = line.split(' ');
  if (p[0] === 'EXPECT') { drainS = Number(p[2]); expect = Number(p[1]); }
  else if (p[0] === 'STOP') stop = true;
  else if (p[0] === 'CLOSE') { stop = true; closeResolve(); }
}).on('close', () => { stop = true; closeResolve(); });

function error(text) { if (errors.length < 20) errors.push(text); }

async function consumers() {
  const lat = [];
  let unique = 0;
  let total = 0;
  const seen = new Map();
  let ready = 0;
  const list = [];
  for (let i = 0; i < n; i++) {
    const group = pattern === 'queue' ? `${topic}-g` : `${topic}-g${i}`;
    const c = new Consumer({ nameSrv, httpclient: {}, consumerGroup: group, logger: silent,
      instanceName: `load${process.pid}c${i}`, rebalanceInterval: 1000, pullBatchSize: 32,
      parallelConsumeLimit: 32, consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET' });
    c.on('error', err => error(`consumer: ${err.message}`));
    let marked = false;
    c.on(`topic_${topic}_queue_changed`, () => { if (!marked) { marked = true; ready++; } });
    c.subscribe(topic, '*', async msg => {
      const t = now();
      const body = msg.body;
      total++;
      if (!body || body.length < 16) return;
      const key = body.readUInt32BE(0) * 4294967296 + body.readUInt32BE(4);
      const k = `${i}:${key}`;
      if (seen.has(k)) return;
      seen.set(k, true);
      unique++;
      const rec = Buffer.allocUnsafe(28);
      rec.writeUInt32BE(i, 0);
      body.copy(rec, 4, 0, 16);
      rec.writeBigUInt64BE(t, 20);
      lat.push(rec);
    });
    list.push(c);
  }
  while (ready < n && !stop) await sleep(50);
  await sleep(1500); // the group members agree on the queues (rebalance once a second)
  print('READY');
  let last = -1;
  let lastChange = Date.now();
  let doneAt = 0;
  while (!stop) {
    const t = Date.now();
    if (unique !== last) { last = unique; lastChange = t; print(`P ${unique}`); }
    if (expect >= 0) {
      if (!doneAt) doneAt = t;
      if (unique >= expect) break;
      if (t - Math.max(lastChange, doneAt) > drainS * 1000) break;
    }
    await sleep(50);
  }
  fs.writeFileSync(latFile, Buffer.concat(lat));
  print('IO');
  await closed;
  await Promise.all(list.map(c => c.close().catch(() => {})));
  print(`RESULT total=${total} unique=${unique} errors=${errors.length}`);
  for (const e of errors) print(`ERROR ${e}`);
}

// A sharding key that sends producer i's messages to one queue. ali-ons hashes the key (md5) to
// a queue and cannot name queue 0 that way (a 0 id reads as "no queue"): queues 1.. are used.
function shardingKey(producer, i) {
  const info = producer._topicPublishInfoTable.get(topic);
  const nq = info ? new Set(info.messageQueueList.map(q => q.queueId)).size : 1;
  if (nq < 2) return null; // one queue: every message goes there
  const want = 1 + (i % (nq - 1));
  for (let j = 0; ; j++) {
    const key = `p${i}-${j}`;
    if (crypto.createHash('md5').update(key).digest().readUInt32BE() % nq === want) return key;
  }
}

async function producers() {
  const clients = [];
  for (let i = 0; i < n; i++) {
    const p = new Producer({ nameSrv, httpclient: {}, producerGroup: `${topic}-p${i}`, logger: silent,
      instanceName: `load${process.pid}p${i}`, compressMsgBodyOverHowmuch: 1 << 30,
      maxMessageSize: Math.max(size, 1 << 22) });
    p.on('error', err => error(`producer: ${err.message}`));
    await p.ready();
    clients.push(p);
  }
  // each client learns the topic's route before the clock starts (concurrent first sends
  // would each ask the name server, and leave in the order the answers come)
  for (const p of clients) await p.send(new Message(topic, 'warm', Buffer.alloc(4)));
  const keys = clients.map((p, i) => shardingKey(p, i));
  print('READY');
  let sent = 0;
  let confirmed = 0;
  const started = Date.now();
  const pad = Buffer.alloc(Math.max(0, size - 16), 120);
  const loop = async (index, seqs) => {
    while (!stop) {
      const slot = seqs.slot++; // pacing slot; the sequence number is taken when sending, so
      if (count ? slot >= count : Date.now() - started >= duration * 1000) break; // sends
      if (rate) { //                                           leave in sequence order
        const due = started + (slot / rate) * 1000;
        const wait = due - Date.now();
        if (wait > 0) await sleep(wait);
        if (stop) break;
      }
      const seq = seqs.next++;
      const head = Buffer.allocUnsafe(16);
      head.writeUInt32BE(index, 0);
      head.writeUInt32BE(seq, 4);
      head.writeBigUInt64BE(now(), 8);
      sent++;
      try {
        const msg = new Message(topic, 'load', Buffer.concat([ head, pad ]));
        if (keys[index]) msg.shardingKey = keys[index];
        await clients[index].send(msg);
        confirmed++;
      } catch (err) {
        error(`send: ${err.message}`);
      }
    }
  };
  const tasks = [];
  for (let i = 0; i < n; i++) {
    const seqs = { next: 0, slot: 0 };
    for (let w = 0; w < windowSize; w++) tasks.push(loop(i, seqs));
  }
  const progress = setInterval(() => print(`P ${sent}`), 100);
  await Promise.all(tasks);
  clearInterval(progress);
  print(`P ${sent}`);
  print('IO');
  await closed;
  await Promise.all(clients.map(p => p.close().catch(() => {})));
  print(`RESULT sent=${sent} confirmed=${confirmed} errors=${errors.length}`);
  for (const e of errors) print(`ERROR ${e}`);
}

(role === 'consumer' ? consumers() : producers())
  .then(() => process.exit(0))
  .catch(err => { print(`ERROR ${err.message}`); process.exit(1); });
