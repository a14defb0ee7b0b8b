import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

/** Sends N persistent messages (synchronous sends) to a queue and prints "SENT i" after each
 *  send returns, so a test can see which sends the broker has answered.
 *  Usage: JmsProducer url queue count */
public class JmsProducer {
    public static void main(String[] args) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        f.setUserName("guest");
        f.setPassword("guest");
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(args[1]));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        System.out.println("CONNECTED");
        System.out.flush();
        int n = Integer.parseInt(args[2]);
        for (int i = 1; i <= n; i++) {
            p.send(s.createTextMessage("jms-" + i));
            System.out.println("SENT " + i);
            System.out.flush();
        }
        c.close();
        System.out.println("DONE");
        System.out.flush();
    }
}
