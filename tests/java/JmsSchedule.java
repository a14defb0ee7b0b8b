// Scheduled delivery (ActiveMQ's AMQ_SCHEDULED_* properties) with the real ActiveMQ 5.17 client.
// Usage: java JmsSchedule <brokerURL> <scenario>[:<arg>]...  Prints "OK <check>" /
// "FAIL <check> <detail>" lines and "DONE"; pytest parses them (tests/java/jmsrun.py).
import java.util.*;
import javax.jms.*;
import javax.jms.Queue;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ScheduledMessage;

public class JmsSchedule extends JmsChecks {
    /** Delay 1.5 s: nothing before, the message after, and not much later than due. */
    static void sc_delay(String q) throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue dest = s.createQueue(q);
        MessageConsumer mc = s.createConsumer(dest);
        MessageProducer p = s.createProducer(dest);
        TextMessage m = s.createTextMessage("delayed");
        m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_DELAY, 1500);
        long sent = System.currentTimeMillis();
        p.send(m);
        p.send(s.createTextMessage("now"));
        Message first = mc.receive(5000);
        check("delay.undelayed_first", first instanceof TextMessage
                && "now".equals(((TextMessage) first).getText()), "got " + first);
        check("delay.not_early", mc.receive(1000) == null, "arrived before its delay");
        Message got = mc.receive(10000);
        long at = System.currentTimeMillis() - sent;
        check("delay.arrives", got instanceof TextMessage
                && "delayed".equals(((TextMessage) got).getText()), "got " + got);
        check("delay.on_time", at >= 1450 && at < 4000, "after " + at + " ms");
        c.close();
    }

    /** Delay 500 ms, then two repeats 700 ms apart: three deliveries, each a new message id. */
    static void sc_repeat(String q) throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue dest = s.createQueue(q);
        MessageConsumer mc = s.createConsumer(dest);
        TextMessage m = s.createTextMessage("again");
        m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_DELAY, 500);
        m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_PERIOD, 700);
        m.setIntProperty(ScheduledMessage.AMQ_SCHEDULED_REPEAT, 2);
        long sent = System.currentTimeMillis();
        s.createProducer(dest).send(m);
        Set<String> ids = new HashSet<>();
        List<Long> times = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            Message got = mc.receive(10000);
            if (got == null) break;
            ids.add(got.getJMSMessageID());
            times.add(System.currentTimeMillis() - sent);
        }
        check("repeat.three", times.size() == 3, "got " + times);
        check("repeat.distinct_ids", ids.size() == 3, "ids " + ids);
        check("repeat.spacing", times.size() == 3 && times.get(0) >= 450
                && times.get(2) - times.get(0) >= 1300, "times " + times);
        check("repeat.no_more", mc.receive(1500) == null, "a fourth delivery");
        c.close();
    }

    /** A cron entry: deliveries land on whole minutes (the test waits for the first). */
    static void sc_cron(String q) throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue dest = s.createQueue(q);
        MessageConsumer mc = s.createConsumer(dest);
        TextMessage m = s.createTextMessage("tick");
        m.setStringProperty(ScheduledMessage.AMQ_SCHEDULED_CRON, "* * * * *");
        s.createProducer(dest).send(m);
        Message got = mc.receive(75000);
        long at = System.currentTimeMillis();
        check("cron.arrives", got != null, "nothing within 75 s");
        check("cron.on_the_minute", at % 60000 < 3000, "at " + (at % 60000) + " ms past");
        c.close();
    }

    /** A schedule the broker cannot honour (repeats without a period): the send fails. */
    static void sc_badrepeat(String q) throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TextMessage m = s.createTextMessage("x");
        m.setIntProperty(ScheduledMessage.AMQ_SCHEDULED_REPEAT, 3);
        MessageProducer p = s.createProducer(s.createQueue(q));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        try {
            p.send(m);
            fail("badrepeat.refused", "send succeeded");
        } catch (JMSException e) {
            ok("badrepeat.refused");
        }
        // the connection goes on serving
        p.send(s.createTextMessage("fine"));
        MessageConsumer mc = s.createConsumer(s.createQueue(q));
        Message got = mc.receive(5000);
        check("badrepeat.connection_serves", got instanceof TextMessage
                && "fine".equals(((TextMessage) got).getText()), "got " + got);
        c.close();
    }

    /** Persistent sends scheduled <arg> ms ahead; the broker is killed after the responses. */
    static void sc_send_later(String arg) throws Exception {
        String[] a = arg.split(",");
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(a[0]));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < 5; i++) {
            TextMessage m = s.createTextMessage("later-" + i);
            m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_DELAY, Long.parseLong(a[1]) + i * 100);
            p.send(m);  // synchronous: answered once the job is on disk
        }
        System.out.println("SENT " + System.currentTimeMillis());
        ok("later.sent");
        c.close();
    }

    /** Receive the five messages sent by send_later; print when each arrived. */
    static void sc_receive_later(String q) throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createQueue(q));
        Set<String> got = new TreeSet<>();
        for (int i = 0; i < 5; i++) {
            Message m = mc.receive(20000);
            if (m == null) break;
            got.add(((TextMessage) m).getText());
            System.out.println("GOT " + System.currentTimeMillis());
        }
        check("later.all", got.size() == 5, "got " + got);
        check("later.no_more", mc.receive(500) == null, "a duplicate");
        c.close();
    }

    /** arg "queue,dlq": a message with a 400 ms time to live and no consumer ends in dlq. */
    static void sc_expire(String arg) throws Exception {
        String[] a = arg.split(",");
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(a[0]));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        p.setTimeToLive(400);
        p.send(s.createTextMessage("short-lived"));
        Thread.sleep(1200);
        MessageConsumer mc = s.createConsumer(s.createQueue(a[0]));
        check("expire.gone", mc.receive(500) == null, "an expired message was delivered");
        MessageConsumer dlq = s.createConsumer(s.createQueue(a[1]));
        Message got = dlq.receive(5000);
        check("expire.in_dlq", got instanceof TextMessage
                && "short-lived".equals(((TextMessage) got).getText()), "got " + got);
        check("expire.no_ttl_in_dlq", got != null && got.getJMSExpiration() == 0,
                "expiration " + (got == null ? null : got.getJMSExpiration()));
        c.close();
    }

    /** arg "queue,dlq,redeliveries": a transacted consumer rolls back every time; with the
     * client's own redeliveries off each rollback hands the message to the broker, which
     * redelivers it after its delays; after that many redeliveries it is in dlq. */
    static void sc_redelivery(String arg) throws Exception {
        String[] a = arg.split(",");
        int redeliveries = Integer.parseInt(a[2]);
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        f.getRedeliveryPolicy().setMaximumRedeliveries(0);
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(true, Session.SESSION_TRANSACTED);
        Queue q = s.createQueue(a[0]);
        s.createProducer(q).send(s.createTextMessage("poison"));
        s.commit();
        MessageConsumer mc = s.createConsumer(q);
        List<Long> times = new ArrayList<>();
        for (int i = 0; i < redeliveries + 2; i++) {
            Message m = mc.receive(i <= redeliveries ? 15000 : 3000);
            if (m == null) break;
            times.add(System.currentTimeMillis());
            s.rollback();
        }
        check("redelivery.count", times.size() == redeliveries + 1, "deliveries " + times.size());
        StringBuilder gaps = new StringBuilder();
        for (int i = 1; i < times.size(); i++) gaps.append(times.get(i) - times.get(i - 1)).append(' ');
        System.out.println("GAPS " + gaps.toString().trim());
        MessageConsumer dlq = s.createConsumer(s.createQueue(a[1]));
        Message dead = dlq.receive(5000);
        check("redelivery.in_dlq", dead instanceof TextMessage
                && "poison".equals(((TextMessage) dead).getText()), "got " + dead);
        s.commit();
        c.close();
    }

    public static void main(String[] args) throws Exception {
        runScenarios(JmsSchedule.class, args);
    }
}
