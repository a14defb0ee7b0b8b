// JMS throughput benchmark: N producers and M consumers (each on its own connection) on one
// queue or topic, persistent or not. Prints one "RESULT ..." line.
// Usage: java JmsBench <url> <queue|topic> <persistent:true|false> <producers> <consumers>
//                      <messagesPerProducer> <bodySize>
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicLong;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsBench {
    public static void main(String[] a) throws Exception {
        String url = a[0];
        boolean topic = a[1].equals("topic");
        boolean persistent = Boolean.parseBoolean(a[2]);
        int producers = Integer.parseInt(a[3]);
        int consumers = Integer.parseInt(a[4]);
        int perProducer = Integer.parseInt(a[5]);
        int size = Integer.parseInt(a[6]);
        String name = "bench." + a[1] + "." + System.nanoTime();
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        long total = (long) producers * perProducer;
        long expected = topic ? total * consumers : total;
        CountDownLatch done = new CountDownLatch(1);
        AtomicLong received = new AtomicLong();
        Connection[] cc = new Connection[consumers];
        for (int i = 0; i < consumers; i++) {
            cc[i] = f.createConnection();
            Session s = cc[i].createSession(false, Session.AUTO_ACKNOWLEDGE);
            Destination d = topic ? s.createTopic(name) : s.createQueue(name);
            s.createConsumer(d).setMessageListener(m -> {
                if (received.incrementAndGet() == expected) done.countDown();
            });
            cc[i].start();
        }
        byte[] body = new byte[size];
        ExecutorService pool = Executors.newFixedThreadPool(producers);
        CountDownLatch ready = new CountDownLatch(producers);
        CountDownLatch go = new CountDownLatch(1);
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
                for (int k = 0; k < perProducer; k++) {
                    BytesMessage m = s.createBytesMessage();
                    m.writeBytes(body);
                    p.send(m);
                }
                return null;
            });
        }
        ready.await();
        long t0 = System.nanoTime();
        go.countDown();
        for (Future<?> x : fs) x.get();
        long t1 = System.nanoTime();
        boolean all = done.await(300, TimeUnit.SECONDS);
        long t2 = System.nanoTime();
        double sendS = (t1 - t0) / 1e9, allS = (t2 - t0) / 1e9;
        System.out.printf("RESULT sent=%d received=%d complete=%s send_s=%.3f total_s=%.3f "
                + "send_rate=%.0f recv_rate=%.0f%n", total, received.get(), all, sendS, allS,
                total / sendS, received.get() / allS);
        for (Connection c : pc) c.close();
        for (Connection c : cc) c.close();
        pool.shutdown();
        System.exit(0);
    }
}
