// Permission checks seen by the ActiveMQ 5.17 JMS client: refusals arrive as JMSSecurityException.
// Usage: java JmsSecurity <brokerURL> <user> <password>   (the user may write and read "jms.*"
// queues only). Prints "OK <check>" / "FAIL <check> <detail>" lines and "DONE".
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsSecurity {
    static void ok(String name) { System.out.println("OK " + name); }

    static void fail(String name, String detail) {
        System.out.println("FAIL " + name + " " + detail.replace('\n', ' '));
    }

    interface Step { void run() throws JMSException; }

    static void refused(String name, Step step) {
        try {
            step.run();
            fail(name, "not refused");
        } catch (JMSSecurityException e) {
            ok(name);
        } catch (JMSException e) {
            fail(name, "wrong exception " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        Connection c = f.createConnection(args[1], args[2]);
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue mine = s.createQueue("jms.q");
        MessageProducer p = s.createProducer(mine);
        p.send(s.createTextMessage("allowed"));
        ok("send.allowed");
        Queue other = s.createQueue("other.q");
        refused("send.refused", () -> {
            MessageProducer q = s.createProducer(other);
            q.send(s.createTextMessage("forged"));
        });
        refused("consume.refused", () -> s.createConsumer(other));
        refused("topic.send.refused", () -> {
            MessageProducer q = s.createProducer(s.createTopic("news.all"));
            q.send(s.createTextMessage("forged"));
        });
        MessageConsumer mc = s.createConsumer(mine);
        Message m = mc.receive(10000);
        if (m instanceof TextMessage && "allowed".equals(((TextMessage) m).getText())) {
            ok("consume.allowed");
        } else {
            fail("consume.allowed", "got " + m);
        }
        c.close();
        ok("close");
        System.out.println("DONE");
    }
}
