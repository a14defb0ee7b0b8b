// Queue dispatch scenarios for the OpenWire adapter, run with the real ActiveMQ 5.17 JMS client:
// XA refusal, exclusive consumers, durable unsubscribe, JMS priority, message groups, virtual
// topics, wildcard queue consumers.
// Usage: java JmsDispatch <brokerURL> <scenario>...   Prints "OK <check>" / "FAIL <check> <detail>"
// lines and "DONE" at the end; pytest parses them.
import java.util.*;
import javax.jms.*;
import javax.jms.Queue;
import javax.transaction.xa.XAException;
import javax.transaction.xa.XAResource;
import javax.transaction.xa.Xid;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQXAConnectionFactory;

public class JmsDispatch extends JmsChecks {
    /** Every text ``mc`` receives until it has been quiet for ``quietMs``. */
    static List<String> all(MessageConsumer mc, long quietMs) throws JMSException {
        List<String> got = new ArrayList<>();
        while (true) {
            Message m = mc.receive(quietMs);
            if (m == null) return got;
            got.add(((TextMessage) m).getText());
        }
    }

    static List<String> texts(MessageConsumer mc, int n) throws JMSException {
        List<String> got = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            Message m = mc.receive(10000);
            if (m == null) break;
            got.add(((TextMessage) m).getText());
        }
        return got;
    }

    public static void main(String[] args) throws Exception {
        runScenarios(JmsDispatch.class, args);
    }

    // -- XA: two-phase commit with a durable prepare -----------------------------------------
    static class TestXid implements Xid {
        final byte[] gtrid, bqual;
        TestXid(String name) {
            gtrid = ("polymq-gtrid-" + name).getBytes();
            bqual = ("b-" + name).getBytes();
        }
        TestXid(int n) { this(n + "-" + System.nanoTime()); }
        public int getFormatId() { return 4660; }
        public byte[] getGlobalTransactionId() { return gtrid; }
        public byte[] getBranchQualifier() { return bqual; }
    }

    static boolean same(Xid a, Xid b) {
        return a.getFormatId() == b.getFormatId()
            && Arrays.equals(a.getGlobalTransactionId(), b.getGlobalTransactionId())
            && Arrays.equals(a.getBranchQualifier(), b.getBranchQualifier());
    }

    static Xid find(Xid[] found, Xid x) {
        for (Xid f : found) if (same(f, x)) return f;
        return null;
    }

    static String show(Xid[] found) {
        List<String> out = new ArrayList<>();
        for (Xid f : found) out.add(new String(f.getGlobalTransactionId()));
        return out.toString();
    }

    static XAConnection xaConn() throws JMSException {
        XAConnection xc = new ActiveMQXAConnectionFactory(url).createXAConnection();
        xc.start();
        return xc;
    }

    static String text(Message m) throws JMSException {
        return m == null ? null : ((TextMessage) m).getText();
    }

    static final int ALL = XAResource.TMSTARTRSCAN | XAResource.TMENDRSCAN;

    static void sc_xa() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue out = s.createQueue("xa.out.q");
        MessageConsumer outc = s.createConsumer(out);
        XAConnection xc = xaConn();
        XASession xs = xc.createXASession();
        XAResource xr = xs.getXAResource();
        MessageProducer xp = xs.createProducer(out);
        // two-phase commit of a send
        Xid x1 = new TestXid(1);
        xr.start(x1, XAResource.TMNOFLAGS);
        xp.send(xs.createTextMessage("two-phase"));
        xr.end(x1, XAResource.TMSUCCESS);
        eq("xa.prepare.ok", XAResource.XA_OK, xr.prepare(x1));
        eq("xa.invisible.while.prepared", null, outc.receive(500));
        xr.commit(x1, false);
        eq("xa.two.phase.commit", "two-phase", text(outc.receive(5000)));
        // one-phase commit
        Xid x2 = new TestXid(2);
        xr.start(x2, XAResource.TMNOFLAGS);
        xp.send(xs.createTextMessage("one-phase"));
        xr.end(x2, XAResource.TMSUCCESS);
        xr.commit(x2, true);
        eq("xa.one.phase.commit", "one-phase", text(outc.receive(5000)));
        // rollback of a prepared send
        Xid x3 = new TestXid(3);
        xr.start(x3, XAResource.TMNOFLAGS);
        xp.send(xs.createTextMessage("rolled back"));
        xr.end(x3, XAResource.TMSUCCESS);
        xr.prepare(x3);
        xr.rollback(x3);
        eq("xa.rollback.drops.send", null, outc.receive(700));
        // a message consumed in a prepared branch, rolled back from another connection
        Queue in = s.createQueue("xa.in.q");
        s.createProducer(in).send(s.createTextMessage("consumed"));
        MessageConsumer xcons = xs.createConsumer(in);
        Xid x4 = new TestXid(4);
        xr.start(x4, XAResource.TMNOFLAGS);
        Message got = xcons.receive(5000);
        xr.end(x4, XAResource.TMSUCCESS);
        eq("xa.consume.in.branch", "consumed", text(got));
        eq("xa.prepare.consume", XAResource.XA_OK, xr.prepare(x4));
        XAConnection xc2 = xaConn();
        XAResource xr2 = xc2.createXASession().getXAResource();
        Xid[] found = xr2.recover(ALL);
        check("xa.recover.lists.prepared", find(found, x4) != null, show(found));
        check("xa.recover.not.finished", find(found, x1) == null, show(found));
        xr2.rollback(x4);
        xc.close();
        MessageConsumer again = s.createConsumer(in);
        eq("xa.rollback.returns.consumed", "consumed", text(again.receive(5000)));
        again.close();
        // a message consumed in a branch that commits is gone for good
        s.createProducer(in).send(s.createTextMessage("consumed2"));
        XAConnection xc3 = xaConn();
        XASession xs3 = xc3.createXASession();
        XAResource xr3 = xs3.getXAResource();
        MessageConsumer xcons3 = xs3.createConsumer(in);
        Xid x5 = new TestXid(5);
        xr3.start(x5, XAResource.TMNOFLAGS);
        eq("xa.consume2.in.branch", "consumed2", text(xcons3.receive(5000)));
        xr3.end(x5, XAResource.TMSUCCESS);
        xr3.prepare(x5);
        xr3.commit(x5, false);
        xc3.close();
        eq("xa.commit.consumes", null, s.createConsumer(in).receive(700));
        try {
            xr2.commit(new TestXid(99), false);
            fail("xa.unknown.commit.refused", "commit of an unknown branch accepted");
        } catch (XAException e) {
            ok("xa.unknown.commit.refused");
        }
        xc2.close();
        c.close();
    }

    static final Xid XA_A = new TestXid("restart-A"), XA_B = new TestXid("restart-B");

    /** Prepares two branches and leaves them undecided (the broker is then killed). */
    static void sc_xa_prepare() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue in = s.createQueue("xa.r.in"), out = s.createQueue("xa.r.out");
        MessageProducer p = s.createProducer(in);
        p.send(s.createTextMessage("r1"));
        p.send(s.createTextMessage("r2"));
        XAConnection xc = xaConn();
        XASession xs = xc.createXASession();
        XAResource xr = xs.getXAResource();
        MessageConsumer cons = xs.createConsumer(in);
        MessageProducer prod = xs.createProducer(out);
        List<String> consumed = new ArrayList<>();
        for (Xid x : new Xid[] {XA_A, XA_B}) {
            xr.start(x, XAResource.TMNOFLAGS);
            consumed.add(text(cons.receive(5000)));
            prod.send(xs.createTextMessage(x == XA_A ? "A-out" : "B-out"));
            xr.end(x, XAResource.TMSUCCESS);
            eq("xa.restart.prepared." + (x == XA_A ? "a" : "b"), XAResource.XA_OK, xr.prepare(x));
        }
        eq("xa.restart.consumed", Arrays.asList("r1", "r2"), consumed);
        xc.close();  // the prepared branches outlive their connection
        eq("xa.restart.out.empty", null, s.createConsumer(out).receive(500));
        eq("xa.restart.in.held", null, s.createConsumer(in).receive(500));
        c.close();
    }

    /** After the restart: recover, commit one, roll back the other. */
    static void sc_xa_finish() throws Exception {
        XAConnection xc = xaConn();
        XAResource xr = xc.createXASession().getXAResource();
        Xid[] found = xr.recover(ALL);
        Xid a = find(found, XA_A), b = find(found, XA_B);
        check("xa.restart.recovered", a != null && b != null, show(found));
        if (a == null || b == null) { xc.close(); return; }
        xr.commit(a, false);
        xr.rollback(b);
        check("xa.restart.recover.empty", xr.recover(ALL).length == 0, show(xr.recover(ALL)));
        xc.close();
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        eq("xa.restart.committed.send", Arrays.asList("A-out"),
            all(s.createConsumer(s.createQueue("xa.r.out")), 700));
        eq("xa.restart.rolled.back.consume", Arrays.asList("r2"),
            all(s.createConsumer(s.createQueue("xa.r.in")), 700));
        c.close();
    }

    // -- exclusive consumers: the second one waits as a standby ------------------------------
    static void sc_exclusive() throws Exception {
        Connection c1 = conn(), c2 = conn(), c3 = conn();
        Session s1 = c1.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Session s3 = c3.createSession(false, Session.AUTO_ACKNOWLEDGE);
        // a plain consumer first: the exclusive one takes the queue from it
        MessageConsumer plain = s3.createConsumer(s3.createQueue("excl.q"));
        MessageConsumer first = s1.createConsumer(s1.createQueue("excl.q?consumer.exclusive=true"));
        MessageConsumer second = s2.createConsumer(s2.createQueue("excl.q?consumer.exclusive=true"));
        MessageProducer p = s1.createProducer(s1.createQueue("excl.q"));
        for (int i = 0; i < 4; i++) p.send(s1.createTextMessage("m" + i));
        eq("exclusive.first.gets.all", Arrays.asList("m0", "m1", "m2", "m3"), texts(first, 4));
        eq("exclusive.second.waits", null, second.receive(700));
        eq("exclusive.plain.waits", null, plain.receive(300));
        c1.close();  // the exclusive consumer leaves: the standby takes over
        MessageProducer p2 = s2.createProducer(s2.createQueue("excl.q"));
        p2.send(s2.createTextMessage("m4"));
        p2.send(s2.createTextMessage("m5"));
        eq("exclusive.standby.takes.over", Arrays.asList("m4", "m5"), texts(second, 2));
        eq("exclusive.plain.still.waits", null, plain.receive(500));
        c2.close();  // no exclusive consumer left: the plain one gets messages again
        s3.createProducer(s3.createQueue("excl.q")).send(s3.createTextMessage("m6"));
        Message m = plain.receive(5000);
        eq("exclusive.plain.after", "m6", m == null ? null : ((TextMessage) m).getText());
        c3.close();
    }

    // -- durable unsubscribe -----------------------------------------------------------------
    static void sc_unsubscribe() throws Exception {
        Connection c = new ActiveMQConnectionFactory(url).createConnection();
        c.setClientID("unsub-client-" + System.nanoTime());
        c.start();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        try {
            s.unsubscribe("no-such-subscription");
            fail("unsubscribe.missing", "accepted");
        } catch (InvalidDestinationException e) {
            ok("unsubscribe.missing");
        }
        TopicSubscriber sub = s.createDurableSubscriber(s.createTopic("unsub.t"), "sub1");
        sub.close();
        s.unsubscribe("sub1");
        ok("unsubscribe.existing");
        try {
            s.unsubscribe("sub1");
            fail("unsubscribe.twice", "accepted");
        } catch (InvalidDestinationException e) {
            ok("unsubscribe.twice");
        }
        c.close();
    }

    // -- JMSPriority orders a queue's backlog -------------------------------------------------
    static void sc_priority() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue("prio.q");
        MessageProducer p = s.createProducer(q);
        int[] prios = {4, 0, 9, 4, 1, 7, 9, 2, 5, 3, 8, 6};
        for (int i = 0; i < prios.length; i++) {
            p.send(s.createTextMessage("p" + prios[i] + "-" + i), DeliveryMode.PERSISTENT, prios[i], 0);
        }
        MessageConsumer mc = s.createConsumer(q);
        List<String> got = texts(mc, prios.length);
        List<String> want = Arrays.asList(
            "p9-2", "p9-6", "p8-10", "p7-5", "p6-11", "p5-8", "p4-0", "p4-3", "p3-9", "p2-7",
            "p1-4", "p0-1");
        eq("priority.order", want, got);
        mc.close();
        // a queue that only ever sees the default priority stays in order of arrival
        Queue fifo = s.createQueue("prio.fifo.q");
        MessageProducer pf = s.createProducer(fifo);
        for (int i = 0; i < 5; i++) pf.send(s.createTextMessage("f" + i));
        eq("priority.default.fifo", Arrays.asList("f0", "f1", "f2", "f3", "f4"),
            texts(s.createConsumer(fifo), 5));
        c.close();
    }

    // -- message groups ----------------------------------------------------------------------
    static void sc_groups() throws Exception {
        Connection ca = conn(), cb = conn(), cp = conn();
        Session sa = ca.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Session sb = cb.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Session sp = cp.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer a = sa.createConsumer(sa.createQueue("groups.q?consumer.prefetchSize=1"));
        MessageConsumer b = sb.createConsumer(sb.createQueue("groups.q?consumer.prefetchSize=1"));
        MessageProducer p = sp.createProducer(sp.createQueue("groups.q"));
        for (int i = 1; i <= 3; i++) {
            for (String g : new String[] {"G1", "G2"}) {
                TextMessage m = sp.createTextMessage(g + "-" + i);
                m.setStringProperty("JMSXGroupID", g);
                p.send(m);
            }
        }
        Map<String, List<String>> seen = new TreeMap<>();
        seen.put("a", new ArrayList<>());
        seen.put("b", new ArrayList<>());
        // alternate between the two consumers (each holds one message until acknowledged)
        for (int round = 0; round < 12; round++) {
            MessageConsumer mc = round % 2 == 0 ? a : b;
            Message m = mc.receive(round < 6 ? 2000 : 300);
            if (m != null) {
                seen.get(round % 2 == 0 ? "a" : "b").add(((TextMessage) m).getText());
                m.acknowledge();
            }
        }
        List<String> ga = seen.get("a"), gb = seen.get("b");
        boolean aHasG1 = !ga.isEmpty() && ga.get(0).startsWith("G1");
        List<String> g1 = aHasG1 ? ga : gb, g2 = aHasG1 ? gb : ga;
        eq("groups.sticky.g1", Arrays.asList("G1-1", "G1-2", "G1-3"), g1);
        eq("groups.sticky.g2", Arrays.asList("G2-1", "G2-2", "G2-3"), g2);
        // the owner of G1 leaves: the group goes to the other consumer
        MessageConsumer other = aHasG1 ? b : a;
        (aHasG1 ? ca : cb).close();
        TextMessage m4 = sp.createTextMessage("G1-4");
        m4.setStringProperty("JMSXGroupID", "G1");
        p.send(m4);
        Message got = other.receive(5000);
        eq("groups.reassigned", "G1-4", got == null ? null : ((TextMessage) got).getText());
        if (got != null) got.acknowledge();
        (aHasG1 ? cb : ca).close();
        cp.close();
    }

    // -- virtual topics ------------------------------------------------------------------------
    static void sc_virtualtopic() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer qa = s.createConsumer(s.createQueue("Consumer.A.VirtualTopic.orders"));
        MessageConsumer qb = s.createConsumer(s.createQueue("Consumer.B.VirtualTopic.orders"));
        Session s2 = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer qa2 = s2.createConsumer(s2.createQueue("Consumer.A.VirtualTopic.orders"));
        MessageProducer p = s.createProducer(s.createTopic("VirtualTopic.orders"));
        for (int i = 0; i < 4; i++) p.send(s.createTextMessage("o" + i));
        List<String> b = texts(qb, 4);
        eq("virtualtopic.each.consumer.queue", Arrays.asList("o0", "o1", "o2", "o3"), b);
        List<String> a = new ArrayList<>(all(qa, 700));
        List<String> a2 = all(qa2, 300);
        List<String> both = new ArrayList<>(a);
        both.addAll(a2);
        Collections.sort(both);
        eq("virtualtopic.queue.shared", Arrays.asList("o0", "o1", "o2", "o3"), both);
        check("virtualtopic.load.balanced", !a.isEmpty() && !a2.isEmpty(), a + " / " + a2);
        c.close();
        // the queue keeps messages while nobody reads it (it is a queue, not a subscription)
        Connection c2 = conn();
        Session s3 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        s3.createProducer(s3.createTopic("VirtualTopic.orders")).send(s3.createTextMessage("later"));
        MessageConsumer again = s3.createConsumer(s3.createQueue("Consumer.B.VirtualTopic.orders"));
        Message m = again.receive(5000);
        eq("virtualtopic.kept", "later", m == null ? null : ((TextMessage) m).getText());
        c2.close();
    }

    // -- wildcard queue consumers --------------------------------------------------------------
    static void sc_wildcardqueue() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(null);
        p.send(s.createQueue("wq.a"), s.createTextMessage("a1"));
        p.send(s.createQueue("wq.b.c"), s.createTextMessage("bc1"));
        p.send(s.createQueue("wqx.a"), s.createTextMessage("other"));
        MessageConsumer all = s.createConsumer(s.createQueue("wq.>"));
        List<String> got = texts(all, 2);
        Collections.sort(got);
        eq("wildcardqueue.existing", Arrays.asList("a1", "bc1"), got);
        p.send(s.createQueue("wq.new"), s.createTextMessage("n1"));
        Message m = all.receive(5000);
        eq("wildcardqueue.new.queue", "n1", m == null ? null : ((TextMessage) m).getText());
        eq("wildcardqueue.not.other", null, all.receive(500));
        MessageConsumer one = s.createConsumer(s.createQueue("wq.*"));
        p.send(s.createQueue("wq.b.c"), s.createTextMessage("deep"));
        all.close();
        eq("wildcardqueue.star.one.level", null, one.receive(500));
        one.close();
        MessageConsumer rest = s.createConsumer(s.createQueue("wqx.a"));
        Message r = rest.receive(5000);
        eq("wildcardqueue.other.kept", "other", r == null ? null : ((TextMessage) r).getText());
        c.close();
    }

    // -- across protocols (the Python side publishes or requests) -----------------------------
    static String body(Message m) throws JMSException {
        if (m == null) return null;
        if (m instanceof TextMessage) return ((TextMessage) m).getText();
        if (m instanceof BytesMessage) {
            BytesMessage b = (BytesMessage) m;
            byte[] data = new byte[(int) b.getBodyLength()];
            b.readBytes(data);
            return new String(data, java.nio.charset.StandardCharsets.UTF_8);
        }
        return String.valueOf(m);
    }

    static void sc_vt_cross_setup() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        s.createConsumer(s.createQueue("Consumer.X.VirtualTopic.cross")).close();
        c.close();
        ok("vt.cross.queue");
    }

    static void sc_vt_cross_read() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createQueue("Consumer.X.VirtualTopic.cross"));
        List<String> got = new ArrayList<>();
        for (int i = 0; i < 2; i++) {
            Message m = mc.receive(5000);
            if (m == null) break;
            got.add(body(m));
        }
        Collections.sort(got);
        eq("vt.cross.received", Arrays.asList("from amqp", "from mqtt"), got);
        c.close();
    }

    static void sc_rpc_responder() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createQueue("rpc.jms"));
        System.out.println("READY");
        System.out.flush();
        Message m = mc.receive(20000);
        if (m == null) {
            fail("rpc.request", "no request");
            c.close();
            return;
        }
        TextMessage r = s.createTextMessage(body(m).toUpperCase());
        r.setJMSCorrelationID(m.getJMSCorrelationID());
        s.createProducer(m.getJMSReplyTo()).send(r);
        ok("rpc.replied");
        c.close();
    }

    static void sc_excl_refused() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        try {
            s.createConsumer(s.createQueue("mixed.excl"));
            fail("excl.refused", "consumer accepted on a queue with an AMQP exclusive consumer");
        } catch (JMSException e) {
            ok("excl.refused");
        }
        // the connection still works
        MessageConsumer other = s.createConsumer(s.createQueue("mixed.other"));
        s.createProducer(s.createQueue("mixed.other")).send(s.createTextMessage("fine"));
        eq("excl.connection.fine", "fine", body(other.receive(5000)));
        c.close();
    }

    static void sc_wildcard_listen() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer mc = s.createConsumer(s.createQueue("wqm.>"));
        System.out.println("READY");
        System.out.flush();
        eq("wildcard.amqp.queue", "from amqp", body(mc.receive(20000)));
        c.close();
    }

    static void sc_consumer_priority() throws Exception {
        Connection c = conn();
        Session sl = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Session sh = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        // the low one subscribes first: round-robin would hand it the first message
        MessageConsumer low = sl.createConsumer(
            sl.createQueue("cprio.q?consumer.prefetchSize=1&consumer.priority=1"));
        MessageConsumer high = sh.createConsumer(
            sh.createQueue("cprio.q?consumer.prefetchSize=1&consumer.priority=9"));
        MessageProducer p = sl.createProducer(sl.createQueue("cprio.q"));
        p.send(sl.createTextMessage("m0"));
        p.send(sl.createTextMessage("m1"));
        eq("consumer.priority.high.first", "m0", body(high.receive(5000)));
        eq("consumer.priority.low.when.high.full", "m1", body(low.receive(5000)));
        c.close();
    }

    static void sc_pull_paged() throws Exception {
        Connection c = conn();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue("pull.paged.q"));
        for (int i = 0; i < 100; i++) p.send(s.createTextMessage("m" + i));
        MessageConsumer mc = s.createConsumer(s.createQueue("pull.paged.q?consumer.prefetchSize=0"));
        int n = 0;
        while (mc.receiveNoWait() != null) n++;
        eq("pull.paged.all", 100, n);
        c.close();
    }
}
