// A long-lived JMS client (ActiveMQ 5.x) driven by the interoperability tests over stdin/stdout.
// One command per line, words separated by spaces, every free-form value base64 (UTF-8):
//   SUB <id> <topic|queue> <b64 name>      create a consumer            -> "OK"
//   RECV <id> <timeout ms>                 receive one message          -> "MSG k=v ..." | "NONE"
//   SEND <topic|queue> <b64 name> <kind> <b64 body> [field=value ...]  -> "OK <b64 id>"
//        kind: text | bytes | map (body = "k=b64v,...", string entries); fields: corr, type,
//        replyq (a queue name), prio, persist (0/1), ttl (ms), p.<name>=<jtype>:<b64 text>
//   CLOSE <id>                             close a consumer             -> "OK"
//   POISON <b64 queue>                     receive one message in a transaction and roll it
//                                          back; with no redeliveries allowed the client
//                                          sends a POISON ack (dead-letter) -> "OK" | "NONE"
//   QUIT
// A received message is printed as: cls, body, id, corr, type, replyto, prio, ts, exp, persist,
// redelivered, and p.<name>=<jtype>:<b64 value> (byte[] values as base64 of the bytes).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.*;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsInterop {
    static Session session;
    static Connection conn;
    static Map<String, MessageConsumer> consumers = new HashMap<>();

    static String b64(String s) {
        return Base64.getEncoder().encodeToString(s.getBytes(StandardCharsets.UTF_8));
    }

    static String b64(byte[] b) { return Base64.getEncoder().encodeToString(b); }

    static String unb64(String s) {
        return new String(Base64.getDecoder().decode(s), StandardCharsets.UTF_8);
    }

    static Destination dest(String kind, String name) throws JMSException {
        return kind.equals("topic") ? session.createTopic(name) : session.createQueue(name);
    }

    static Object typed(String jtype, String text) {
        switch (jtype) {
            case "string": return text;
            case "boolean": return Boolean.valueOf(text);
            case "byte": return Byte.valueOf(text);
            case "short": return Short.valueOf(text);
            case "int": return Integer.valueOf(text);
            case "long": return Long.valueOf(text);
            case "float": return Float.valueOf(text);
            case "double": return Double.valueOf(text);
            default: throw new IllegalArgumentException("type " + jtype);
        }
    }

    static String jtype(Object v) {
        if (v instanceof String) return "string";
        if (v instanceof Boolean) return "boolean";
        if (v instanceof Byte) return "byte";
        if (v instanceof Short) return "short";
        if (v instanceof Integer) return "int";
        if (v instanceof Long) return "long";
        if (v instanceof Float) return "float";
        if (v instanceof Double) return "double";
        if (v instanceof byte[]) return "bytes";
        return v == null ? "null" : v.getClass().getSimpleName();
    }

    static String send(String[] w) throws Exception {
        Destination d = dest(w[1], unb64(w[2]));
        String kind = w[3];
        Message m;
        if (kind.equals("text")) {
            m = session.createTextMessage(unb64(w[4]));
        } else if (kind.equals("bytes")) {
            BytesMessage bm = session.createBytesMessage();
            bm.writeBytes(Base64.getDecoder().decode(w[4]));
            m = bm;
        } else {
            MapMessage mm = session.createMapMessage();
            for (String e : unb64(w[4]).split(",")) {
                if (e.isEmpty()) continue;
                String[] kv = e.split("=", 2);
                mm.setString(kv[0], unb64(kv[1]));
            }
            m = mm;
        }
        int prio = Message.DEFAULT_PRIORITY;
        int mode = DeliveryMode.PERSISTENT;
        long ttl = 0;
        for (int i = 5; i < w.length; i++) {
            String[] kv = w[i].split("=", 2);
            String k = kv[0], v = kv[1];
            if (k.equals("corr")) m.setJMSCorrelationID(unb64(v));
            else if (k.equals("type")) m.setJMSType(unb64(v));
            else if (k.equals("replyq")) m.setJMSReplyTo(session.createQueue(unb64(v)));
            else if (k.equals("prio")) prio = Integer.parseInt(v);
            else if (k.equals("persist")) mode = v.equals("1") ? DeliveryMode.PERSISTENT
                                                              : DeliveryMode.NON_PERSISTENT;
            else if (k.equals("ttl")) ttl = Long.parseLong(v);
            else if (k.startsWith("p.")) {
                String[] tv = v.split(":", 2);
                m.setObjectProperty(k.substring(2), typed(tv[0], unb64(tv[1])));
            }
        }
        MessageProducer p = session.createProducer(d);
        p.send(m, mode, prio, ttl);
        p.close();
        return m.getJMSMessageID();
    }

    static String describe(Message m) throws JMSException {
        StringBuilder sb = new StringBuilder("MSG");
        String cls;
        byte[] body;
        if (m instanceof TextMessage) {
            cls = "Text";
            String t = ((TextMessage) m).getText();
            body = t == null ? new byte[0] : t.getBytes(StandardCharsets.UTF_8);
        } else if (m instanceof BytesMessage) {
            cls = "Bytes";
            BytesMessage bm = (BytesMessage) m;
            body = new byte[(int) bm.getBodyLength()];
            bm.readBytes(body);
        } else if (m instanceof MapMessage) {
            cls = "Map";
            MapMessage mm = (MapMessage) m;
            StringBuilder mb = new StringBuilder();
            for (Enumeration<?> e = mm.getMapNames(); e.hasMoreElements(); ) {
                String n = (String) e.nextElement();
                mb.append(n).append('=').append(b64(String.valueOf(mm.getObject(n)))).append(',');
            }
            body = mb.toString().getBytes(StandardCharsets.UTF_8);
        } else {
            cls = m.getClass().getSimpleName();
            body = new byte[0];
        }
        sb.append(" cls=").append(b64(cls)).append(" body=").append(b64(body));
        add(sb, "id", m.getJMSMessageID());
        add(sb, "corr", m.getJMSCorrelationID());
        add(sb, "type", m.getJMSType());
        add(sb, "replyto", m.getJMSReplyTo() == null ? null : m.getJMSReplyTo().toString());
        add(sb, "dest", m.getJMSDestination() == null ? null : m.getJMSDestination().toString());
        add(sb, "prio", String.valueOf(m.getJMSPriority()));
        add(sb, "ts", String.valueOf(m.getJMSTimestamp()));
        add(sb, "exp", String.valueOf(m.getJMSExpiration()));
        add(sb, "persist", m.getJMSDeliveryMode() == DeliveryMode.PERSISTENT ? "1" : "0");
        add(sb, "userid", m.getStringProperty("JMSXUserID"));
        add(sb, "redelivered", m.getJMSRedelivered() ? "1" : "0");
        for (Enumeration<?> e = m.getPropertyNames(); e.hasMoreElements(); ) {
            String n = (String) e.nextElement();
            Object v = m.getObjectProperty(n);
            String text = v instanceof byte[] ? b64((byte[]) v) : b64(String.valueOf(v));
            sb.append(" p.").append(n).append('=').append(jtype(v)).append(':').append(text);
        }
        return sb.toString();
    }

    static void add(StringBuilder sb, String k, String v) {
        if (v != null) sb.append(' ').append(k).append('=').append(b64(v));
    }

    public static void main(String[] args) throws Exception {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(args[0]);
        f.setTrustAllPackages(false);
        f.getRedeliveryPolicy().setMaximumRedeliveries(0);
        Connection c = f.createConnection();
        conn = c;
        c.start();
        session = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in,
                                                                     StandardCharsets.UTF_8));
        System.out.println("READY");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            String out;
            try {
                switch (w[0]) {
                    case "SUB":
                        consumers.put(w[1], session.createConsumer(dest(w[2], unb64(w[3]))));
                        out = "OK";
                        break;
                    case "RECV": {
                        Message m = consumers.get(w[1]).receive(Long.parseLong(w[2]));
                        out = m == null ? "NONE" : describe(m);
                        break;
                    }
                    case "SEND":
                        out = "OK " + b64(send(w));
                        break;
                    case "POISON": {
                        Session ts = conn.createSession(true, Session.SESSION_TRANSACTED);
                        MessageConsumer mc = ts.createConsumer(ts.createQueue(unb64(w[1])));
                        Message m = mc.receive(5000);
                        ts.rollback();
                        mc.close();
                        ts.close();
                        out = m == null ? "NONE" : "OK";
                        break;
                    }
                    case "CLOSE":
                        consumers.remove(w[1]).close();
                        out = "OK";
                        break;
                    case "QUIT":
                        c.close();
                        System.out.println("BYE");
                        System.out.flush();
                        System.exit(0);
                        return;
                    default:
                        out = "ERR unknown command";
                }
            } catch (Exception e) {
                out = "ERR " + String.valueOf(e).replace('\n', ' ');
            }
            System.out.println(out);
            System.out.flush();
        }
        System.exit(0);
    }
}
