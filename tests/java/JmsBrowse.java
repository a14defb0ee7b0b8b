import java.util.Enumeration;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

/** Sends N persistent messages with an int property "n" to a queue, then browses it, all and
 *  with the selector "n >= N-50", printing "ALL count first last" and "SEL count first".
 *  Usage: JmsBrowse url queue count */
public class JmsBrowse {
    public static void main(String[] args) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        f.setUserName("guest");
        f.setPassword("guest");
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue(args[1]);
        int n = Integer.parseInt(args[2]);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < n; i++) {
            TextMessage m = s.createTextMessage("m" + i);
            m.setIntProperty("n", i);
            p.send(m);
        }
        System.out.println(browse(s, q, null, "ALL"));
        System.out.println(browse(s, q, "n >= " + (n - 50), "SEL"));
        c.close();
        System.out.println("DONE");
        System.out.flush();
    }

    static String browse(Session s, Queue q, String selector, String tag) throws JMSException {
        QueueBrowser b = selector == null ? s.createBrowser(q) : s.createBrowser(q, selector);
        Enumeration<?> e = b.getEnumeration();
        int count = 0;
        String first = "-", last = "-";
        while (e.hasMoreElements()) {
            String text = ((TextMessage) e.nextElement()).getText();
            if (count == 0) first = text;
            last = text;
            count++;
        }
        b.close();
        return tag + " " + count + " " + first + " " + last;
    }
}
