// JMS throughput benchmark: N producers and M consumers (each on its own connection) on one
// queue or topic, persistent or not. Prints one "RESULT ..." line.
// Usage: java JmsBench <url> <queue|topic> <persistent:true|false> <producers> <consumers>
//                      <messagesPerProducer> <bodySize> [warmupPerProducer] [brokerPid]
// With a warm-up, the same connections first move warmupPerProducer messages per producer
// (not timed: the client's JIT compiles its hot paths meanwhile), then the timed run starts.
// With a broker pid (Linux), the broker's CPU time during the timed run is read from /proc and
// printed as broker_user_s and broker_sys_s; client_cpu_s is this JVM's own CPU time during the timed run.
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicLong;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsBench {
    static final long TICKS = 100; // USER_HZ (sysconf CLK_TCK) on Linux

    /** User and system CPU seconds of a process (zeros without a pid). */
    static double[] procCpu(String pid) throws Exception {
        if (pid == null) return new double[2];
        String s = new String(Files.readAllBytes(Paths.get("/proc/" + pid + "/stat")));
        String[] f = s.substring(s.lastIndexOf(')') + 2).split(" ");
        return new double[] {Long.parseLong(f[11]) / (double) TICKS,
                             Long.parseLong(f[12]) / (double) TICKS};
    }

    static double ownCpu() {
        return ((com.sun.management.OperatingSystemMXBean)
                ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime() / 1e9;
    }

    public static void main(String[] a) throws Exception {
        String url = a[0];
        boolean topic = a[1].equals("topic");
        boolean persistent = Boolean.parseBoolean(a[2]);
        int producers = Integer.parseInt(a[3]);
        int consumers = Integer.parseInt(a[4]);
        int perProducer = Integer.parseInt(a[5]);
        int size = Integer.parseInt(a[6]);
        int warmPerProducer = a.length > 7 ? Integer.parseInt(a[7]) : 0;
        String brokerPid = a.length > 8 ? a[8] : null;
        String name = "bench." + a[1] + "." + System.nanoTime();
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        int fan = topic ? consumers : 1;
        long warmExpected = (long) producers * warmPerProducer * fan;
        long total = (long) producers * perProducer;
        long expected = total * fan;
        CountDownLatch warmDone = new CountDownLatch(1);
        CountDownLatch done = new CountDownLatch(1);
        AtomicLong received = new AtomicLong();
        Connection[] cc = new Connection[consumers];
        for (int i = 0; i < consumers; i++) {
            cc[i] = f.createConnection();
            Session s = cc[i].createSession(false, Session.AUTO_ACKNOWLEDGE);
            Destination d = topic ? s.createTopic(name) : s.createQueue(name);
            s.createConsumer(d).setMessageListener(m -> {
                long n = received.incrementAndGet();
                if (n == warmExpected) warmDone.countDown();
                if (n == warmExpected + expected) done.countDown();
            });
            cc[i].start();
        }
        if (warmExpected == 0) warmDone.countDown();
        byte[] body = new byte[size];
        ExecutorService pool = Executors.newFixedThreadPool(producers);
        CountDownLatch ready = new CountDownLatch(producers);
        CountDownLatch go = new CountDownLatch(1);
        CountDownLatch timed = new CountDownLatch(1);
        Future<?>[] fs = new Future<?>[producers];
        Connection[] pc = new Connection[producers];
        for (int i = 0; i < producers; i++) {
            pc[i] = f.createConnection();
            pc[i].start();
            final Connection conn = pc[i];
            fs[i] = pool.submit(() -> {
                Session s = conn.createSession(false, Session.AUTO_ACKNOWLEDGE);
                Destination d = topic ? s.createTopic(name) : s.createQueue(name);
                MessageProducer p = s.createProducer(d);
                p.setDeliveryMode(persistent ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT);
                ready.countDown();
                go.await();
                for (int k = 0; k < warmPerProducer; k++) {
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    p.send(m);
                }
                timed.await();
                for (int k = 0; k < perProducer; k++) {
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    p.send(m);
                }
                return null;
            });
        }
        ready.await();
        go.countDown();
        boolean warmed = warmDone.await(300, TimeUnit.SECONDS);
        double[] b0 = procCpu(brokerPid);
        double c0 = ownCpu();
        long t0 = System.nanoTime();
        timed.countDown();
        for (Future<?> x : fs) x.get();
        long t1 = System.nanoTime();
        boolean all = warmed && done.await(300, TimeUnit.SECONDS);
        long t2 = System.nanoTime();
        double[] b1 = procCpu(brokerPid);
        double c1 = ownCpu();
        long got = received.get() - warmExpected;
        double sendS = (t1 - t0) / 1e9, allS = (t2 - t0) / 1e9;
        System.out.printf("RESULT sent=%d received=%d complete=%s send_s=%.3f total_s=%.3f "
                + "send_rate=%.0f recv_rate=%.0f broker_user_s=%.3f broker_sys_s=%.3f "
                + "client_cpu_s=%.3f%n", total, got, all, sendS, allS, total / sendS, got / allS,
                b1[0] - b0[0], b1[1] - b0[1], c1 - c0);
        for (Connection c : pc) c.close();
        for (Connection c : cc) c.close();
        pool.shutdown();
        System.exit(0);
    }
}
