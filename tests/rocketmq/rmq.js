'use strict';
// Drives the unmodified ali-ons client for the polymq tests; one JSON object per output line.
//   node rmq.js produce <nameSrv> <topic> <count> [tag] [prefix] [size] [delayLevel]
//   node rmq.js consume <nameSrv> <group> <topic> <expr> <count> [broadcast|cluster] [failMatch] [maxReconsume] [timeoutS] [fromMs]
//     (fromMs: a new group starts at this time, epoch ms on a whole second: CONSUME_FROM_TIMESTAMP)
//   node rmq.js interop <nameSrv>   (commands as JSON lines on stdin, for tests/interop/clients.py)
const { Producer, Consumer, Message } = require('ali-ons');

const silent = { info() {}, warn() {}, debug() {}, error() {} };
const out = obj => process.stdout.write(JSON.stringify(obj) + '\n');

async function produce(nameSrv, topic, count, tag, prefix, size, delayLevel) {
  const producer = new Producer({ nameSrv, httpclient: {}, producerGroup: 'polymq-test-producer', logger: silent });
  producer.on('error', err => out({ error: err.message }));
  await producer.ready();
  for (let i = 0; i < count; i++) {
    let text = `${prefix || 'm'}-${i}`;
    if (size) text = text.padEnd(size, 'x');
    const msg = new Message(topic, tag || '', Buffer.from(text));
    msg.keys = [ `key-${i}` ];
    msg.properties.app_header = `value-${i}`;
    if (delayLevel) msg.delayTimeLevel = delayLevel;
    const r = await producer.send(msg);
    out({ sent: text.slice(0, 40), at: Date.now(), status: r.sendStatus, msgId: r.msgId, queueId: Number(r.messageQueue.queueId), queueOffset: r.queueOffset });
  }
  await producer.close();
  out({ done: true });
  process.exit(0);
}

// ali-ons takes the start time as local yyyyMMddHHmmss
const localTime = ms => {
  const d = new Date(ms);
  const two = n => String(n).padStart(2, '0');
  return `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`;
};

async function consume(nameSrv, group, topic, expr, count, model, failMatch, maxReconsume, timeoutS, fromMs) {
  const from = Number(fromMs) ? { consumeFromWhere: 'CONSUME_FROM_TIMESTAMP', consumeTimestamp: localTime(Number(fromMs)) } : {};
  const consumer = new Consumer({
    nameSrv, httpclient: {}, consumerGroup: group, logger: silent,
    isBroadcast: model === 'broadcast',
    rebalanceInterval: 1000,
    persistConsumerOffsetInterval: 500,
    maxReconsumeTimes: maxReconsume === undefined ? 16 : Number(maxReconsume),
    consumeFromWhere: topic.startsWith('%DLQ%') ? 'CONSUME_FROM_FIRST_OFFSET' : 'CONSUME_FROM_LAST_OFFSET',
    ...from,
  });
  consumer.on('error', err => { if (!/process mq message failed/.test(err.message)) out({ error: err.message }); });
  let got = 0;
  let ready = false;
  const finish = async code => {
    await consumer.close();
    out({ done: true, got });
    process.exit(code);
  };
  consumer.on(`topic_${topic}_queue_changed`, () => {
    if (!ready) { ready = true; setTimeout(() => out({ ready: true }), 300); }
  });
  consumer.subscribe(topic, expr, async msg => {
    const body = msg.body ? msg.body.toString() : '';
    out({ body: body.length > 60 ? body.slice(0, 40) + `..(${body.length})` : body, len: body.length,
      topic: msg.topic, tags: msg.tags, keys: msg.keys, queueId: msg.queueId,
      queueOffset: msg.queueOffset, reconsumeTimes: msg.reconsumeTimes,
      props: msg.properties, bornTimestamp: msg.bornTimestamp, at: Date.now() });
    if (failMatch && body.includes(failMatch)) throw new Error('refusing ' + body);
    got++;
    if (got >= count) setTimeout(() => finish(0), 200);
  });
  setTimeout(() => finish(3), (Number(timeoutS) || 60) * 1000);
}

// One producer and any number of push consumers (one new group each), driven by JSON lines:
//   {"op":"publish","seq":n,"topic":t,"body":b64,"tags":t,"keys":k,"props":{..}} -> {"seq":n,"sent":msgId}
//   {"op":"subscribe","seq":n,"handle":h,"topic":t} -> {"seq":n,"ready":true}, then {"handle":h,"msg":{..}}
//   {"op":"done","seq":n,"handle":h} -> {"seq":n,"closed":true}
async function interop(nameSrv) {
  const producer = new Producer({ nameSrv, httpclient: {}, producerGroup: 'polymq-interop', logger: silent });
  producer.on('error', err => out({ error: err.message }));
  await producer.ready();
  const consumers = new Map();
  const handle = async cmd => {
    if (cmd.op === 'publish') {
      const msg = new Message(cmd.topic, cmd.tags || '', Buffer.from(cmd.body, 'base64'));
      if (cmd.keys) msg.keys = [ cmd.keys ];
      Object.assign(msg.properties, cmd.props || {});
      const r = await producer.send(msg);
      out({ seq: cmd.seq, sent: r.msgId, status: r.sendStatus });
    } else if (cmd.op === 'subscribe') {
      const consumer = new Consumer({
        nameSrv, httpclient: {}, consumerGroup: `interop-${cmd.handle}`, logger: silent,
        rebalanceInterval: 1000, persistConsumerOffsetInterval: 500,
        consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET',
      });
      consumer.on('error', err => out({ error: err.message }));
      consumers.set(cmd.handle, consumer);
      let ready = false;
      consumer.on(`topic_${cmd.topic}_queue_changed`, () => {
        if (!ready) { ready = true; setTimeout(() => out({ seq: cmd.seq, ready: true }), 300); }
      });
      consumer.subscribe(cmd.topic, '*', async msg => {
        out({ handle: cmd.handle, msg: { body: (msg.body || Buffer.alloc(0)).toString('base64'),
          topic: msg.topic, tags: msg.tags, keys: msg.keys, props: msg.properties,
          bornTimestamp: Number(msg.bornTimestamp) } });
      });
    } else if (cmd.op === 'done') {
      const consumer = consumers.get(cmd.handle);
      consumers.delete(cmd.handle);
      if (consumer) await consumer.close();
      out({ seq: cmd.seq, closed: true });
    } else if (cmd.op === 'close') {
      for (const c of consumers.values()) await c.close();
      await producer.close();
      out({ seq: cmd.seq, closed: true });
      process.exit(0);
    }
  };
  out({ started: true });
  require('readline').createInterface({ input: process.stdin }).on('line', line => {
    let cmd;
    try { cmd = JSON.parse(line); } catch (err) { out({ error: 'bad command ' + line }); return; }
    handle(cmd).catch(err => out({ seq: cmd.seq, error: err.message }));
  }).on('close', () => process.exit(0));
}

const [ mode, ...args ] = process.argv.slice(2);
if (mode === 'produce') {
  produce(args[0], args[1], Number(args[2]), args[3], args[4], Number(args[5] || 0), Number(args[6] || 0)).catch(err => { out({ error: err.message }); process.exit(2); });
} else if (mode === 'consume') {
  consume(args[0], args[1], args[2], args[3], Number(args[4]), args[5], args[6], args[7], args[8], args[9]).catch(err => { out({ error: err.message }); process.exit(2); });
} else if (mode === 'interop') {
  interop(args[0]).catch(err => { out({ error: err.message }); process.exit(2); });
} else {
  out({ error: 'usage' });
  process.exit(1);
}
