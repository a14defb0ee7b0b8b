// Load client for `polymq compare` (OpenWire): the ActiveMQ 5 JMS client, driven line by line
// by plugins/compare/drivers/openwire.py over stdin/stdout.
//   java OpenWireLoad producer|consumer URL DEST N COUNT DURATION_S RATE SIZE GUARANTEE LATFILE
// DEST is queue://name or topic://name; COUNT 0 = run for DURATION_S; RATE 0 = unlimited.
// stdout: READY, "P <n>" progress, IO (then waits for CLOSE on stdin), RESULT k=v ...
// stdin (consumer): EXPECT <n> <drain_s> once the producers are done; STOP to give up.
import java.io.*;
import java.nio.ByteBuffer;
import java.util.*;
import java.util.concurrent.atomic.*;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class OpenWireLoad {
    static volatile long expect = -1;
    static volatile double drainS = 10;
    static volatile boolean stop = false;
    static volatile boolean close = false;
    static final AtomicLong progress = new AtomicLong();
    static final List<String> errors = Collections.synchronizedList(new ArrayList<>());

    public static void main(String[] a) throws Exception {
        String role = a[0], url = a[1], dest = a[2];
        int n = Integer.parseInt(a[3]);
        long count = Long.parseLong(a[4]);
        double duration = Double.parseDouble(a[5]);
        double rate = Double.parseDouble(a[6]);
        int size = Integer.parseInt(a[7]);
        String guarantee = a[8];
        String latFile = a[9];
        String opts = guarantee.equals("at-most-once") ? "jms.useAsyncSend=true"
                : "jms.alwaysSyncSend=true";
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(
                url + (url.contains("?") ? "&" : "?") + opts);
        f.setWatchTopicAdvisories(false);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        PrintStream out = System.out;
        Thread reader = new Thread(() -> {
            try {
                String line;
                while ((line = in.readLine()) != null) {
                    if (line.startsWith("EXPECT")) {
                        String[] p = line.split(" ");
                        drainS = Double.parseDouble(p[2]);
                        expect = Long.parseLong(p[1]);
                    } else if (line.startsWith("STOP")) {
                        stop = true;
                    } else if (line.startsWith("CLOSE")) {
                        break;
                    }
                }
            } catch (IOException e) { }
            stop = true;
            close = true;
        });
        reader.setDaemon(true);
        reader.start();
        List<Connection> conns = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        if (role.equals("consumer")) {
            Consumer[] cs = new Consumer[n];
            for (int i = 0; i < n; i++) {
                Connection c = f.createConnection();
                c.start();
                conns.add(c);
                Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
                cs[i] = new Consumer(s.createConsumer(destination(s, dest)));
            }
            for (Consumer c : cs) { Thread t = new Thread(c); t.start(); threads.add(t); }
            out.println("READY"); out.flush();
            long lastCount = -1, lastChange = System.nanoTime(), doneAt = 0;
            while (!stop) {
                long total = 0;
                for (Consumer c : cs) total += c.unique;
                long now = System.nanoTime();
                if (total != lastCount) { lastCount = total; lastChange = now; out.println("P " + total); out.flush(); }
                if (expect >= 0) {
                    if (doneAt == 0) doneAt = now;
                    if (total >= expect) break;
                    if (now - Math.max(lastChange, doneAt) > drainS * 1e9) break;
                }
                boolean alive = false;
                for (Thread t : threads) alive |= t.isAlive();
                if (!alive) break;
                Thread.sleep(20);
            }
            stop = true;
            for (Thread t : threads) t.join(5000);
            long total = 0, uniq = 0, dups = 0, dis = 0, bad = 0, first = 0, last = 0;
            try (DataOutputStream lat = new DataOutputStream(new BufferedOutputStream(new FileOutputStream(latFile)))) {
                for (Consumer c : cs) {
                    total += c.total; uniq += c.unique; dups += c.dups; dis += c.disorder; bad += c.bad;
                    if (c.first != 0 && (first == 0 || c.first < first)) first = c.first;
                    last = Math.max(last, c.last);
                    for (int i = 0; i < c.nlat; i++) lat.writeLong(c.lat[i]);
                }
            }
            finish(out, in, conns, "total=" + total + " unique=" + uniq + " duplicates=" + dups
                    + " out_of_order=" + dis + " malformed=" + bad + " first_ns=" + first + " last_ns=" + last);
        } else {
            Producer[] ps = new Producer[n];
            for (int i = 0; i < n; i++) {
                Connection c = f.createConnection();
                c.start();
                conns.add(c);
                Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
                MessageProducer p = s.createProducer(destination(s, dest));
                p.setDeliveryMode(guarantee.equals("persistent") ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT);
                p.setDisableMessageID(false);
                ps[i] = new Producer(i, s, p, count, duration, rate, size);
            }
            out.println("READY"); out.flush();
            for (Producer p : ps) { Thread t = new Thread(p); t.start(); threads.add(t); }
            boolean alive = true;
            while (alive) {
                alive = false;
                for (Thread t : threads) alive |= t.isAlive();
                out.println("P " + progress.get()); out.flush();
                Thread.sleep(50);
            }
            long sent = 0, first = Long.MAX_VALUE, last = 0;
            for (Producer p : ps) { sent += p.sent; if (p.first != 0) first = Math.min(first, p.first); last = Math.max(last, p.last); }
            finish(out, in, conns, "sent=" + sent + " confirmed=" + sent + " first_ns=" + (first == Long.MAX_VALUE ? 0 : first) + " last_ns=" + last);
        }
        System.exit(0);
    }

    static synchronized void error(String e) {
        errors.add(e);
        System.out.println("ERROR " + e.replace('\n', ' '));
        System.out.flush();
    }

    static void finish(PrintStream out, BufferedReader in, List<Connection> conns, String result) throws Exception {
        out.println("IO"); out.flush();
        while (!close) Thread.sleep(10);
        for (Connection c : conns) { try { c.close(); } catch (JMSException e) { } }
        out.println("RESULT " + result); out.flush();
    }

    static javax.jms.Destination destination(Session s, String d) throws JMSException {
        if (d.startsWith("topic://")) return s.createTopic(d.substring(8));
        return s.createQueue(d.startsWith("queue://") ? d.substring(8) : d);
    }

    static class Producer implements Runnable {
        final int id; final Session s; final MessageProducer p; final long count; final double duration, rate; final int size;
        long sent = 0, first = 0, last = 0;
        Producer(int id, Session s, MessageProducer p, long count, double duration, double rate, int size) {
            this.id = id; this.s = s; this.p = p; this.count = count; this.duration = duration; this.rate = rate; this.size = size;
        }
        public void run() {
            try {
                byte[] body = new byte[size];
                new Random().nextBytes(body);
                ByteBuffer bb = ByteBuffer.wrap(body);
                long start = System.nanoTime();
                long end = count > 0 ? Long.MAX_VALUE : start + (long) (duration * 1e9);
                first = start;
                while (!stop && (count > 0 ? sent < count : System.nanoTime() < end)) {
                    if (rate > 0) {
                        long due = start + (long) (sent * 1e9 / rate);
                        long wait = due - System.nanoTime();
                        if (wait > 0) Thread.sleep(wait / 1000000, (int) (wait % 1000000));
                    }
                    bb.putInt(0, id); bb.putInt(4, (int) sent); bb.putLong(8, System.nanoTime());
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    p.send(m);
                    sent++;
                    progress.incrementAndGet();
                }
                last = System.nanoTime();
            } catch (Exception e) {
                error("producer " + id + ": " + e);
            }
        }
    }

    static class Consumer implements Runnable {
        final MessageConsumer c;
        long total, unique, dups, disorder, bad, first, last;
        long[] lat = new long[1 << 16]; int nlat = 0;
        final Map<Integer, BitSet> seen = new HashMap<>();
        final Map<Integer, Long> lastSeq = new HashMap<>();
        Consumer(MessageConsumer c) { this.c = c; }
        public void run() {
            byte[] head = new byte[16];
            try {
                while (!stop) {
                    javax.jms.Message m = c.receive(100);
                    if (m == null) continue;
                    long now = System.nanoTime();
                    total++;
                    BytesMessage b = (BytesMessage) m;
                    if (b.getBodyLength() < 16 || b.readBytes(head) != 16) { bad++; continue; }
                    ByteBuffer bb = ByteBuffer.wrap(head);
                    int pid = bb.getInt(0); long seq = bb.getInt(4) & 0xffffffffL; long ts = bb.getLong(8);
                    BitSet bs = seen.computeIfAbsent(pid, k -> new BitSet());
                    if (bs.get((int) seq)) { dups++; continue; }
                    bs.set((int) seq);
                    unique++;
                    long l = lastSeq.getOrDefault(pid, -1L);
                    if (seq < l) disorder++; else lastSeq.put(pid, seq);
                    if (nlat == lat.length) lat = Arrays.copyOf(lat, nlat * 2);
                    lat[nlat++] = (now - ts) / 1000;
                    if (first == 0) first = now;
                    last = now;
                }
            } catch (Exception e) {
                if (!stop) error("consumer: " + e);
            }
        }
    }
}
