// The consumers-per-connection limit as the ActiveMQ 5.17 JMS client sees it.
// Usage: java JmsLimits <brokerURL> <limit>. Prints "OK <check>" / "FAIL <check> <detail>" lines
// and "DONE".
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsLimits {
    static void ok(String name) { System.out.println("OK " + name); }

    static void fail(String name, String detail) {
        System.out.println("FAIL " + name + " " + detail.replace('\n', ' '));
    }

    public static void main(String[] args) throws Exception {
        int limit = Integer.parseInt(args[1]);
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer[] held = new MessageConsumer[limit];
        for (int i = 0; i < limit; i++) {
            held[i] = s.createConsumer(s.createQueue("lim.q" + i));
        }
        ok("up.to.limit");
        try {
            s.createConsumer(s.createQueue("lim.over"));
            fail("over.limit.refused", "not refused");
        } catch (JMSException e) {
            String text = String.valueOf(e.getMessage());
            if (text.contains("at maximum limit: " + limit)) {
                ok("over.limit.refused");
            } else {
                fail("over.limit.refused", e.getClass().getName() + ": " + text);
            }
        }
        held[0].close();
        MessageConsumer again = s.createConsumer(s.createQueue("lim.over"));
        ok("released.slot.reused");
        MessageProducer p = s.createProducer(s.createQueue("lim.over"));
        p.send(s.createTextMessage("still served"));
        Message m = again.receive(10000);
        if (m instanceof TextMessage && "still served".equals(((TextMessage) m).getText())) {
            ok("still.serving");
        } else {
            fail("still.serving", "got " + m);
        }
        c.close();
        System.out.println("DONE");
    }
}
