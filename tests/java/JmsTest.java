// Scenarios for the OpenWire adapter, run with the real ActiveMQ 5.17 JMS client.
// Usage: java JmsTest <brokerURL> <scenario>...   Prints "OK <check>" / "FAIL <check> <detail>"
// lines and "DONE" at the end; pytest parses them.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.*;
import javax.jms.*;
import javax.jms.Queue;
import org.apache.activemq.ActiveMQConnection;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.RedeliveryPolicy;

public class JmsTest extends JmsChecks {
    /** Up to ``expected`` texts (patient), then a short wait for any surplus one. */
    static List<String> texts(MessageConsumer mc, int expected) throws JMSException {
        List<String> got = new ArrayList<>();
        for (int i = 0; i < expected; i++) {
            Message m = mc.receive(10000);
            if (m == null) return got;
            got.add(m instanceof TextMessage ? ((TextMessage) m).getText() : String.valueOf(m));
        }
        Message extra = mc.receive(300);
        if (extra != null) got.add("surplus:" + extra);
        return got;
    }

    static void drain(Session s, Destination d) throws JMSException {
        MessageConsumer mc = s.createConsumer(d);
        while (mc.receive(200) != null) { }
        mc.close();
    }

    public static void main(String[] args) throws Exception {
        runScenarios(JmsTest.class, args);
    }

    // -- handshake and a round trip ---------------------------------------------------------
    static void sc_basic() throws Exception {
        Connection c = conn();
        ok("connect");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("basic.q");
        MessageProducer p = s.createProducer(q);
        p.send(s.createTextMessage("hello"));
        MessageConsumer mc = s.createConsumer(q);
        TextMessage m = (TextMessage) mc.receive(5000);
        eq("basic.receive", "hello", m == null ? null : m.getText());
        c.close();
        ok("close");
    }

    static void sc_idle() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("idle.q");
        MessageConsumer mc = s.createConsumer(q);
        Thread.sleep(5000);  // several negotiated inactivity periods: keep-alives keep it up
        s.createProducer(q).send(s.createTextMessage("still here"));
        Message m = mc.receive(10000);
        eq("idle.alive", "still here", m == null ? null : ((TextMessage) m).getText());
        c.close();
    }

    static void sc_auth_refused() throws Exception {
        try {
            Connection c = factory(url).createConnection("baduser", "badpass");
            c.start();
            fail("auth.refused", "connection accepted");
            c.close();
        } catch (JMSSecurityException e) {
            ok("auth.refused");
        } catch (JMSException e) {
            fail("auth.refused", "wrong exception " + e);
        }
    }

    // -- every message type and property type ------------------------------------------------
    static void setProps(Message m) throws JMSException {
        m.setBooleanProperty("pBool", true);
        m.setByteProperty("pByte", (byte) -5);
        m.setShortProperty("pShort", (short) 300);
        m.setIntProperty("pInt", 70000);
        m.setLongProperty("pLong", 1L << 40);
        m.setFloatProperty("pFloat", 1.5f);
        m.setDoubleProperty("pDouble", 2.25);
        m.setStringProperty("pString", "str\u00e9");
    }

    static void checkProps(String t, Message m) throws JMSException {
        eq(t + ".bool", Boolean.TRUE, m.getObjectProperty("pBool"));
        eq(t + ".byte", Byte.valueOf((byte) -5), m.getObjectProperty("pByte"));
        eq(t + ".short", Short.valueOf((short) 300), m.getObjectProperty("pShort"));
        eq(t + ".int", Integer.valueOf(70000), m.getObjectProperty("pInt"));
        eq(t + ".long", Long.valueOf(1L << 40), m.getObjectProperty("pLong"));
        eq(t + ".float", Float.valueOf(1.5f), m.getObjectProperty("pFloat"));
        eq(t + ".double", Double.valueOf(2.25), m.getObjectProperty("pDouble"));
        eq(t + ".string", "str\u00e9", m.getObjectProperty("pString"));
    }

    static final String TEXT = "h\u00e9llo \u0000 w\u00f6rld \ud83d\ude00";

    static void sendAll(Session s, MessageProducer p) throws JMSException {
        TextMessage tm = s.createTextMessage(TEXT);
        setProps(tm);
        p.send(tm);
        BytesMessage bm = s.createBytesMessage();
        byte[] all = new byte[256];
        for (int i = 0; i < 256; i++) all[i] = (byte) i;
        bm.writeBytes(all);
        setProps(bm);
        p.send(bm);
        MapMessage mm = s.createMapMessage();
        mm.setInt("i", 42);
        mm.setString("s", "v\u00e9");
        mm.setBoolean("b", true);
        mm.setDouble("d", 0.5);
        mm.setLong("l", 123456789012L);
        mm.setShort("sh", (short) 7);
        mm.setByte("by", (byte) 3);
        mm.setFloat("f", 0.25f);
        mm.setChar("c", 'x');
        mm.setBytes("bytes", new byte[] {1, 2, 3});
        setProps(mm);
        p.send(mm);
        StreamMessage sm = s.createStreamMessage();
        sm.writeInt(7);
        sm.writeString("stream");
        sm.writeBoolean(false);
        setProps(sm);
        p.send(sm);
        ArrayList<String> list = new ArrayList<>(Arrays.asList("a", "b"));
        ObjectMessage om = s.createObjectMessage(list);
        setProps(om);
        p.send(om);
        Message plain = s.createMessage();
        setProps(plain);
        p.send(plain);
        TextMessage big = s.createTextMessage(String.join("", Collections.nCopies(100000, "x")));
        p.send(big);
    }

    static void receiveAll(String t, MessageConsumer mc) throws JMSException {
        Message m = mc.receive(5000);
        check(t + ".text.type", m instanceof TextMessage, "got " + m);
        if (m instanceof TextMessage) eq(t + ".text.body", TEXT, ((TextMessage) m).getText());
        if (m != null) checkProps(t + ".text", m);
        m = mc.receive(5000);
        check(t + ".bytes.type", m instanceof BytesMessage, "got " + m);
        if (m instanceof BytesMessage) {
            BytesMessage bm = (BytesMessage) m;
            byte[] got = new byte[(int) bm.getBodyLength()];
            bm.readBytes(got);
            boolean same = got.length == 256;
            for (int i = 0; same && i < 256; i++) same = got[i] == (byte) i;
            check(t + ".bytes.body", same, "len " + got.length);
            checkProps(t + ".bytes", m);
        }
        m = mc.receive(5000);
        check(t + ".map.type", m instanceof MapMessage, "got " + m);
        if (m instanceof MapMessage) {
            MapMessage mm = (MapMessage) m;
            eq(t + ".map.i", Integer.valueOf(42), mm.getObject("i"));
            eq(t + ".map.s", "v\u00e9", mm.getObject("s"));
            eq(t + ".map.b", Boolean.TRUE, mm.getObject("b"));
            eq(t + ".map.d", Double.valueOf(0.5), mm.getObject("d"));
            eq(t + ".map.l", Long.valueOf(123456789012L), mm.getObject("l"));
            eq(t + ".map.sh", Short.valueOf((short) 7), mm.getObject("sh"));
            eq(t + ".map.by", Byte.valueOf((byte) 3), mm.getObject("by"));
            eq(t + ".map.f", Float.valueOf(0.25f), mm.getObject("f"));
            eq(t + ".map.c", Character.valueOf('x'), mm.getObject("c"));
            eq(t + ".map.bytes", "[1, 2, 3]", Arrays.toString(mm.getBytes("bytes")));
            checkProps(t + ".map", m);
        }
        m = mc.receive(5000);
        check(t + ".stream.type", m instanceof StreamMessage, "got " + m);
        if (m instanceof StreamMessage) {
            StreamMessage sm = (StreamMessage) m;
            eq(t + ".stream.0", Integer.valueOf(7), sm.readObject());
            eq(t + ".stream.1", "stream", sm.readObject());
            eq(t + ".stream.2", Boolean.FALSE, sm.readObject());
            checkProps(t + ".stream", m);
        }
        m = mc.receive(5000);
        check(t + ".object.type", m instanceof ObjectMessage, "got " + m);
        if (m instanceof ObjectMessage) {
            eq(t + ".object.body", Arrays.asList("a", "b"), ((ObjectMessage) m).getObject());
            checkProps(t + ".object", m);
        }
        m = mc.receive(5000);
        check(t + ".plain.type", m != null && !(m instanceof TextMessage)
                && !(m instanceof BytesMessage) && !(m instanceof MapMessage)
                && !(m instanceof StreamMessage) && !(m instanceof ObjectMessage), "got " + m);
        if (m != null) checkProps(t + ".plain", m);
        m = mc.receive(5000);
        check(t + ".big", m instanceof TextMessage && ((TextMessage) m).getText().length() == 100000,
              "got " + m);
    }

    static void sc_types() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("types.q");
        sendAll(s, s.createProducer(q));
        receiveAll("queue", s.createConsumer(q));
        Topic t = s.createTopic("types.topic");
        MessageConsumer sub = s.createConsumer(t);
        sendAll(s, s.createProducer(t));
        receiveAll("topic", sub);
        c.close();
    }

    static void sc_compressed() throws Exception {
        Connection c = conn(url + (url.contains("?") ? "&" : "?") + "jms.useCompression=true");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("compressed.q");
        sendAll(s, s.createProducer(q));
        MessageConsumer first = s.createConsumer(q);
        receiveAll("compressed", first);
        first.close();
        sendAll(s, s.createProducer(q));
        Connection plain = conn();
        receiveAll("compressed.plain", plain.createSession(false, Session.AUTO_ACKNOWLEDGE)
                .createConsumer(q));
        plain.close();
        c.close();
    }

    static void sc_headers() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("headers.q");
        Queue reply = s.createQueue("headers.reply");
        MessageProducer p = s.createProducer(q);
        TextMessage m = s.createTextMessage("h");
        m.setJMSCorrelationID("corr-1");
        m.setJMSType("my-type");
        m.setJMSReplyTo(reply);
        long before = System.currentTimeMillis();
        p.send(m, DeliveryMode.NON_PERSISTENT, 7, 60000);
        String id = m.getJMSMessageID();
        Message r = s.createConsumer(q).receive(5000);
        check("headers.received", r != null, "nothing");
        if (r == null) { c.close(); return; }
        eq("headers.id", id, r.getJMSMessageID());
        eq("headers.corr", "corr-1", r.getJMSCorrelationID());
        eq("headers.type", "my-type", r.getJMSType());
        eq("headers.replyto", reply, r.getJMSReplyTo());
        eq("headers.priority", 7, r.getJMSPriority());
        eq("headers.mode", DeliveryMode.NON_PERSISTENT, r.getJMSDeliveryMode());
        check("headers.timestamp", r.getJMSTimestamp() >= before - 1000, "" + r.getJMSTimestamp());
        check("headers.expiration", r.getJMSExpiration() >= before + 59000, "" + r.getJMSExpiration());
        eq("headers.redelivered", false, r.getJMSRedelivered());
        eq("headers.deliverycount", 1, r.getIntProperty("JMSXDeliveryCount"));
        eq("headers.destination", q, r.getJMSDestination());
        s.close();
        s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        p = s.createProducer(q);
        MessageConsumer again = s.createConsumer(q);
        p.send(s.createTextMessage("p"));
        r = again.receive(5000);
        eq("headers.persistent", DeliveryMode.PERSISTENT, r == null ? null : r.getJMSDeliveryMode());
        c.close();
    }

    // -- acknowledgement -------------------------------------------------------------------------
    static void sc_clientack() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Queue q = s.createQueue("clientack.q");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 5; i++) p.send(s.createTextMessage("m" + i));
        MessageConsumer mc = s.createConsumer(q);
        Message last = null;
        for (int i = 0; i < 3; i++) last = mc.receive(5000);
        eq("clientack.third", "m2", last == null ? null : ((TextMessage) last).getText());
        last.acknowledge();  // acks m0..m2
        Message m3 = mc.receive(5000);
        eq("clientack.fourth", "m3", m3 == null ? null : ((TextMessage) m3).getText());
        s.close();  // m3 (and m4, prefetched) go back
        Session s2 = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        MessageConsumer mc2 = s2.createConsumer(q);
        Message r = mc2.receive(5000);
        eq("clientack.redelivered.body", "m3", r == null ? null : ((TextMessage) r).getText());
        eq("clientack.redelivered.flag", true, r == null ? null : r.getJMSRedelivered());
        check("clientack.deliverycount", r != null && r.getIntProperty("JMSXDeliveryCount") >= 2,
              r == null ? "null" : "" + r.getIntProperty("JMSXDeliveryCount"));
        Message r4 = mc2.receive(5000);
        eq("clientack.m4", "m4", r4 == null ? null : ((TextMessage) r4).getText());
        eq("clientack.m4.fresh", false, r4 == null ? null : r4.getJMSRedelivered());
        r4.acknowledge();
        eq("clientack.empty", null, mc2.receive(300));
        c.close();
        // redelivery when a connection closes
        Connection c1 = conn();
        Session sa = c1.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        sa.createProducer(q).send(sa.createTextMessage("conn-close"));
        Message got = sa.createConsumer(q).receive(5000);
        eq("clientack.conn.first", "conn-close", got == null ? null : ((TextMessage) got).getText());
        c1.close();
        Connection c2 = conn();
        Session sb = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Message again = sb.createConsumer(q).receive(5000);
        eq("clientack.conn.again", "conn-close", again == null ? null : ((TextMessage) again).getText());
        c2.close();
    }

    static void sc_individual() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, ActiveMQSessionIndividual());
        Queue q = s.createQueue("individual.q");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 3; i++) p.send(s.createTextMessage("i" + i));
        MessageConsumer mc = s.createConsumer(q);
        Message a = mc.receive(5000), b = mc.receive(5000), d = mc.receive(5000);
        b.acknowledge();  // only i1
        s.close();
        Session s2 = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc2 = s2.createConsumer(q);
        eq("individual.rest", Arrays.asList("i0", "i2"), texts(mc2, 2));
        c.close();
    }

    static int ActiveMQSessionIndividual() { return org.apache.activemq.ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE; }

    static void sc_dlq() throws Exception {
        ActiveMQConnectionFactory f = factory(url);
        RedeliveryPolicy rp = new RedeliveryPolicy();
        rp.setMaximumRedeliveries(2);
        rp.setInitialRedeliveryDelay(0);
        rp.setRedeliveryDelay(0);
        f.setRedeliveryPolicy(rp);
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(true, Session.SESSION_TRANSACTED);
        Queue q = s.createQueue("dlq.q");
        s.createProducer(q).send(s.createTextMessage("poison"));
        s.commit();
        MessageConsumer mc = s.createConsumer(q);
        int seen = 0;
        for (int i = 0; i < 5; i++) {
            Message m = mc.receive(i < 3 ? 10000 : 1500);
            if (m == null) break;
            seen++;
            s.rollback();
        }
        eq("dlq.deliveries", 3, seen);
        Connection c2 = conn();
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Message dead = s2.createConsumer(s2.createQueue("ActiveMQ.DLQ")).receive(5000);
        eq("dlq.dead", "poison", dead == null ? null : ((TextMessage) dead).getText());
        eq("dlq.source.empty", null, s2.createConsumer(q).receive(300));
        c.close();
        c2.close();
    }

    // -- transactions --------------------------------------------------------------------------
    static void sc_tx() throws Exception {
        Connection c = conn();
        Session s = c.createSession(true, Session.SESSION_TRANSACTED);
        Queue q = s.createQueue("tx.q");
        MessageProducer p = s.createProducer(q);
        Session plain = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        p.send(s.createTextMessage("t1"));
        p.send(s.createTextMessage("t2"));
        MessageConsumer watch = plain.createConsumer(q);
        eq("tx.invisible.before.commit", null, watch.receive(300));
        watch.close();
        s.rollback();
        p.send(s.createTextMessage("t3"));
        s.commit();
        MessageConsumer mc = s.createConsumer(q);
        Message m = mc.receive(5000);
        eq("tx.only.committed", "t3", m == null ? null : ((TextMessage) m).getText());
        eq("tx.no.more", null, mc.receive(300));
        s.rollback();  // the receive of t3 is undone
        m = mc.receive(5000);
        eq("tx.rollback.redelivers", "t3", m == null ? null : ((TextMessage) m).getText());
        eq("tx.rollback.flag", true, m == null ? null : m.getJMSRedelivered());
        s.commit();
        mc.close();
        MessageConsumer after = plain.createConsumer(q);
        eq("tx.consumed.after.commit", null, after.receive(300));
        c.close();
    }

    // -- destinations ----------------------------------------------------------------------------
    static void sc_wildcard() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer star = s.createConsumer(s.createTopic("wc.*.temp"));
        MessageConsumer gt = s.createConsumer(s.createTopic("wc.>"));
        MessageProducer p = s.createProducer(null);
        p.send(s.createTopic("wc"), s.createTextMessage("not-matched"));
        p.send(s.createTopic("wc.kitchen.temp"), s.createTextMessage("a"));
        p.send(s.createTopic("wc.kitchen.light.on"), s.createTextMessage("b"));
        Message m = star.receive(5000);
        eq("wildcard.star", "a", m == null ? null : ((TextMessage) m).getText());
        eq("wildcard.star.only", null, star.receive(300));
        eq("wildcard.gt", Arrays.asList("a", "b"), texts(gt, 2));
        c.close();
    }

    static void sc_nolocal() throws Exception {
        Connection a = conn();
        Connection b = conn();
        Session sa = a.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Session sb = b.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic t = sa.createTopic("nolocal.t");
        MessageConsumer others = sa.createConsumer(t, null, true);
        MessageConsumer all = sa.createConsumer(t);
        sa.createProducer(t).send(sa.createTextMessage("mine"));
        sb.createProducer(t).send(sb.createTextMessage("theirs"));
        eq("nolocal.others", Arrays.asList("theirs"), texts(others, 1));
        eq("nolocal.all", Arrays.asList("mine", "theirs"), texts(all, 2));
        a.close();
        b.close();
    }

    static void sc_composite() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer t = s.createConsumer(s.createTopic("comp.t"));
        s.createProducer(s.createQueue("comp.a,comp.b,topic://comp.t"))
                .send(s.createTextMessage("c"));
        for (String n : new String[] {"comp.a", "comp.b"}) {
            Message m = s.createConsumer(s.createQueue(n)).receive(5000);
            eq("composite." + n, "c", m == null ? null : ((TextMessage) m).getText());
        }
        Message m = t.receive(5000);
        eq("composite.topic", "c", m == null ? null : ((TextMessage) m).getText());
        c.close();
    }

    static void sc_tempreply() throws Exception {
        Connection server = conn();
        Session ss = server.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer requests = ss.createConsumer(ss.createQueue("rpc.requests"));
        MessageProducer replier = ss.createProducer(null);
        requests.setMessageListener(msg -> {
            try {
                TextMessage r = ss.createTextMessage("re:" + ((TextMessage) msg).getText());
                r.setJMSCorrelationID(msg.getJMSCorrelationID());
                replier.send(msg.getJMSReplyTo(), r);
            } catch (JMSException e) {
                System.out.println("FAIL tempreply.server " + e);
            }
        });
        Connection client = conn();
        Session cs = client.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TemporaryQueue tq = cs.createTemporaryQueue();
        MessageConsumer replies = cs.createConsumer(tq);
        MessageProducer p = cs.createProducer(cs.createQueue("rpc.requests"));
        for (int i = 0; i < 3; i++) {
            TextMessage req = cs.createTextMessage("q" + i);
            req.setJMSReplyTo(tq);
            req.setJMSCorrelationID("c" + i);
            p.send(req);
            Message r = replies.receive(5000);
            eq("tempreply.reply" + i, "re:q" + i, r == null ? null : ((TextMessage) r).getText());
            eq("tempreply.corr" + i, "c" + i, r == null ? null : r.getJMSCorrelationID());
        }
        TemporaryTopic tt = cs.createTemporaryTopic();
        MessageConsumer ttc = cs.createConsumer(tt);
        TextMessage req = cs.createTextMessage("topic");
        req.setJMSReplyTo(tt);
        p.send(req);
        Message r = ttc.receive(5000);
        eq("tempreply.temptopic", "re:topic", r == null ? null : ((TextMessage) r).getText());
        replies.close();
        tq.delete();
        ok("tempreply.delete");
        client.close();
        server.close();
    }

    static void sc_browser() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("browse.q");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 4; i++) {
            TextMessage m = s.createTextMessage("b" + i);
            m.setIntProperty("n", i);
            p.send(m);
        }
        p.send(s.createTextMessage("expired"), DeliveryMode.NON_PERSISTENT, 4, 1);
        Thread.sleep(50);
        List<String> seen = new ArrayList<>();
        Enumeration<?> e = s.createBrowser(q).getEnumeration();
        while (e.hasMoreElements()) seen.add(((TextMessage) e.nextElement()).getText());
        eq("browser.all", Arrays.asList("b0", "b1", "b2", "b3"), seen);
        seen.clear();
        e = s.createBrowser(q, "n >= 2").getEnumeration();
        while (e.hasMoreElements()) seen.add(((TextMessage) e.nextElement()).getText());
        eq("browser.selector", Arrays.asList("b2", "b3"), seen);
        MessageConsumer mc = s.createConsumer(q);
        eq("browser.not.consumed", 4, texts(mc, 4).size());
        c.close();
    }

    static void sc_prefetch0() throws Exception {
        Connection c = conn(url + (url.contains("?") ? "&" : "?") + "jms.prefetchPolicy.all=0");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("pull.q");
        MessageConsumer mc = s.createConsumer(q);
        eq("prefetch0.nowait.empty", null, mc.receiveNoWait());
        long t0 = System.currentTimeMillis();
        eq("prefetch0.timeout.empty", null, mc.receive(500));
        check("prefetch0.timeout.waited", System.currentTimeMillis() - t0 >= 400, "too fast");
        MessageProducer p = s.createProducer(q);
        p.send(s.createTextMessage("p1"));
        p.send(s.createTextMessage("p2"));
        Message m = mc.receive(5000);
        eq("prefetch0.first", "p1", m == null ? null : ((TextMessage) m).getText());
        // a second consumer gets p2: the first one must not have prefetched it
        Connection c2 = conn();
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Message m2 = s2.createConsumer(q).receive(5000);
        eq("prefetch0.other", "p2", m2 == null ? null : ((TextMessage) m2).getText());
        p.send(s.createTextMessage("p3"));
        c2.close();
        m = mc.receiveNoWait();
        if (m == null) m = mc.receive(10000);
        eq("prefetch0.third", "p3", m == null ? null : ((TextMessage) m).getText());
        c.close();
    }

    static void sc_selector() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("sel.q");
        MessageConsumer red = s.createConsumer(q, "color = 'red' AND size > 2");
        MessageProducer p = s.createProducer(q);
        String[] colors = {"red", "blue", "red", "red"};
        int[] sizes = {1, 5, 5, 9};
        for (int i = 0; i < 4; i++) {
            TextMessage m = s.createTextMessage("s" + i);
            m.setStringProperty("color", colors[i]);
            m.setIntProperty("size", sizes[i]);
            p.send(m);
        }
        eq("selector.queue", Arrays.asList("s2", "s3"), texts(red, 2));
        MessageConsumer rest = s.createConsumer(q);
        eq("selector.rest", Arrays.asList("s0", "s1"), texts(rest, 2));
        Message m;
        Topic t = s.createTopic("sel.t");
        MessageConsumer ts = s.createConsumer(t, "JMSPriority > 5 OR JMSType = 'x'");
        MessageProducer tp = s.createProducer(t);
        tp.send(s.createTextMessage("low"), DeliveryMode.NON_PERSISTENT, 1, 0);
        tp.send(s.createTextMessage("high"), DeliveryMode.NON_PERSISTENT, 8, 0);
        m = ts.receive(5000);
        eq("selector.topic", "high", m == null ? null : ((TextMessage) m).getText());
        eq("selector.topic.only", null, ts.receive(300));
        try {
            s.createConsumer(q, "color = = 'x'");
            fail("selector.invalid", "accepted");
        } catch (InvalidSelectorException e) {
            ok("selector.invalid");
        }
        c.close();
    }

    // -- durable subscriptions (run across a broker restart) ---------------------------------------
    static Connection durableConn() throws JMSException {
        Connection c = factory(url).createConnection();
        c.setClientID("dur-client");
        c.start();
        return c;
    }

    static void sc_durable_subscribe() throws Exception {
        Connection c = durableConn();
        try {
            durableConn();
            fail("durable.clientid.unique", "second connection with the same client id");
        } catch (InvalidClientIDException e) {
            ok("durable.clientid.unique");
        }
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber sub = s.createDurableSubscriber(s.createTopic("dur.t"), "sub1");
        MessageProducer p = s.createProducer(s.createTopic("dur.t"));
        p.send(s.createTextMessage("d0"));
        Message m = sub.receive(5000);
        eq("durable.live", "d0", m == null ? null : ((TextMessage) m).getText());
        c.close();
        Connection pc = conn();
        Session ps = pc.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer pp = ps.createProducer(ps.createTopic("dur.t"));
        pp.send(ps.createTextMessage("d1"));
        pp.send(ps.createTextMessage("d2"));
        pc.close();
        ok("durable.published");
    }

    static void sc_durable_resume() throws Exception {
        Connection c = durableConn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber sub = s.createDurableSubscriber(s.createTopic("dur.t"), "sub1");
        eq("durable.resumed", Arrays.asList("d1", "d2"), texts(sub, 2));
        sub.close();
        s.unsubscribe("sub1");
        ok("durable.unsubscribed");
        MessageProducer p = s.createProducer(s.createTopic("dur.t"));
        p.send(s.createTextMessage("d3"));
        TopicSubscriber sub2 = s.createDurableSubscriber(s.createTopic("dur.t"), "sub1");
        eq("durable.fresh", null, sub2.receive(300));
        c.close();
    }

    // -- persistence across a restart ---------------------------------------------------------
    static void sc_persist_send() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue("persist.q"));
        for (int i = 0; i < 20; i++) p.send(s.createTextMessage("x" + i));
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        p.send(s.createTextMessage("transient"));
        c.close();
        ok("persist.sent");
    }

    static void sc_persist_receive() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createQueue("persist.q"));
        List<String> got = texts(mc, 20);
        List<String> want = new ArrayList<>();
        for (int i = 0; i < 20; i++) want.add("x" + i);
        eq("persist.received", want, got);
        c.close();
    }

    // -- failover: the pytest driver restarts the broker when we print RESTART-ME --------------
    static void sc_failover() throws Exception {
        Connection c = conn("failover:(" + url + ")?initialReconnectDelay=100&maxReconnectDelay=500");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("failover.q");
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 10; i++) p.send(s.createTextMessage("f" + i));
        System.out.println("RESTART-ME");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        for (int i = 10; i < 20; i++) p.send(s.createTextMessage("f" + i));
        ok("failover.sent.after.restart");
        MessageConsumer mc = s.createConsumer(q);
        Set<String> got = new TreeSet<>();  // at-least-once: duplicates allowed
        for (int i = 0; i < 40 && got.size() < 20; i++) {
            Message m = mc.receive(10000);
            if (m == null) break;
            got.add(((TextMessage) m).getText());
        }
        Set<String> want = new TreeSet<>();
        for (int i = 0; i < 20; i++) want.add("f" + i);
        eq("failover.all", want, got);
        c.close();
    }

    static void sc_producer_window() throws Exception {
        Connection c = conn(url + (url.contains("?") ? "&" : "?")
                + "jms.producerWindowSize=4096&jms.useAsyncSend=true");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("window.q");
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        for (int i = 0; i < 200; i++) p.send(s.createTextMessage("w" + i));
        ok("window.sent");
        MessageConsumer mc = s.createConsumer(q);
        eq("window.received", 200, texts(mc, 200).size());
        c.close();
    }

    // -- interop with other protocols (driven by test_openwire_interop.py) -------------------
    static void sc_interop_send() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue("interop.q"));
        TextMessage t = s.createTextMessage("from jms \u00e9");
        t.setJMSCorrelationID("corr-j");
        t.setJMSType("jtype");
        t.setIntProperty("count", 3);
        t.setStringProperty("who", "jms");
        t.setBooleanProperty("flag", true);
        t.setDoubleProperty("ratio", 0.5);
        p.send(t, DeliveryMode.PERSISTENT, 6, 0);
        MapMessage m = s.createMapMessage();
        m.setInt("a", 1);
        m.setString("b", "two");
        p.send(m);
        BytesMessage b = s.createBytesMessage();
        b.writeBytes(new byte[] {0, 1, 2, (byte) 255});
        p.send(b);
        c.close();
        ok("interop.sent");
    }

    static void sc_interop_recv() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createTopic("interop.>"));
        System.out.println("READY");
        System.out.flush();
        Message m = mc.receive(20000);
        check("interop.text.type", m instanceof TextMessage, "got " + m);
        if (m instanceof TextMessage) {
            eq("interop.text.body", "hello \u00e9", ((TextMessage) m).getText());
            eq("interop.text.corr", "c-1", m.getJMSCorrelationID());
            eq("interop.text.prop", "v", m.getStringProperty("k"));
            eq("interop.text.intprop", 7, m.getObjectProperty("n"));
            eq("interop.text.priority", 5, m.getJMSPriority());
            eq("interop.text.destination", "topic://interop.a", "" + m.getJMSDestination());
        }
        m = mc.receive(20000);
        check("interop.bytes.type", m instanceof BytesMessage, "got " + m);
        if (m instanceof BytesMessage) {
            BytesMessage bm = (BytesMessage) m;
            byte[] got = new byte[(int) bm.getBodyLength()];
            bm.readBytes(got);
            eq("interop.bytes.body", "[0, -1, 10]", Arrays.toString(got));
        }
        m = mc.receive(20000);
        check("interop.mqtt.type", m instanceof BytesMessage || m instanceof TextMessage,
              "got " + m);
        if (m != null) eq("interop.mqtt.destination", "topic://interop.m.x", "" + m.getJMSDestination());
        c.close();
    }
}
