'use strict';
// Drives the unmodified ali-ons client for the polymq tests; one JSON object per output line.
//   node rmq.js produce <nameSrv> <topic> <count> [tag] [prefix] [size] [delayLevel]
//   node rmq.js consume <nameSrv> <group> <topic> <expr> <count> [broadcast|cluster] [failMatch] [maxReconsume] [timeoutS]
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

async function consume(nameSrv, group, topic, expr, count, model, failMatch, maxReconsume, timeoutS) {
  const consumer = new Consumer({
    nameSrv, httpclient: {}, consumerGroup: group, logger: silent,
    isBroadcast: model === 'broadcast',
    rebalanceInterval: 1000,
    persistConsumerOffsetInterval: 500,
    maxReconsumeTimes: maxReconsume === undefined ? 16 : Number(maxReconsume),
    consumeFromWhere: topic.startsWith('%DLQ%') ? 'CONSUME_FROM_FIRST_OFFSET' : 'CONSUME_FROM_LAST_OFFSET',
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

const [ mode, ...args ] = process.argv.slice(2);
if (mode === 'produce') {
  produce(args[0], args[1], Number(args[2]), args[3], args[4], Number(args[5] || 0), Number(args[6] || 0)).catch(err => { out({ error: err.message }); process.exit(2); });
} else if (mode === 'consume') {
  consume(args[0], args[1], args[2], args[3], Number(args[4]), args[5], args[6], args[7], args[8]).catch(err => { out({ error: err.message }); process.exit(2); });
} else {
  out({ error: 'usage' });
  process.exit(1);
}
