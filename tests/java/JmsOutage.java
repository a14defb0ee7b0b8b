import java.io.InputStream;

import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.JMSException;
import javax.jms.MessageProducer;
import javax.jms.Session;

import org.apache.activemq.ActiveMQConnectionFactory;

/**
 * Persistent synchronous sends to one queue until stdin closes: prints "ACK i" for a send the
 * broker accepted and "NACK i <exception>" for one it refused (the store could not make it
 * durable). Used by tests/test_store_postgres_broker.py while PostgreSQL is stopped.
 * Arguments: broker URL, queue name.
 */
public class JmsOutage {
    static volatile boolean stop = false;

    public static void main(String[] args) throws Exception {
        Thread watcher = new Thread(() -> {
            try {
                InputStream in = System.in;
                while (in.read() >= 0) { }
            } catch (Exception e) { }
            stop = true;
        });
        watcher.setDaemon(true);
        watcher.start();
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(args[1]));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        int i = 0;
        while (!stop) {
            try {
                p.send(s.createTextMessage(Integer.toString(i)));
                System.out.println("ACK " + i);
            } catch (JMSException e) {
                System.out.println("NACK " + i + " " + e);
            }
            System.out.flush();
            i++;
        }
        c.close();
        System.out.println("DONE");
    }
}
