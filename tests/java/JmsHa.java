// Failover client for tests/test_ha_failover.py and bench/ha_bench.py, ActiveMQ 5.17 JMS client.
//
//   java JmsHa send URL QUEUE COUNT [PAUSE_MS]   persistent sync sends "m-<i>"; prints "ACK <i>"
//                                                after each send() returned (the broker's Response)
//   java JmsHa recv URL QUEUE IDLE_MS            prints "RECV <body>" until nothing arrives for
//                                                IDLE_MS; acknowledges each message; then
//                                                "BROKER <url>" from the node's BrokerInfo
// URL is usually failover:(tcp://a,tcp://b)?... so that the client moves to the standby node.
import javax.jms.*;
import org.apache.activemq.ActiveMQConnection;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsHa {
    public static void main(String[] args) throws Exception {
        String mode = args[0], url = args[1], queue = args[2];
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        f.setUseAsyncSend(false);
        Connection c = f.createConnection();
        c.start();
        Session s = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        Queue q = s.createQueue(queue);
        if (mode.equals("send")) {
            int count = Integer.parseInt(args[3]);
            long pause = args.length > 4 ? Long.parseLong(args[4]) : 0;
            MessageProducer p = s.createProducer(q);
            p.setDeliveryMode(DeliveryMode.PERSISTENT);
            for (int i = 0; i < count; i++) {
                p.send(s.createTextMessage("m-" + i));
                System.out.println("ACK " + i);
                System.out.flush();
                if (pause > 0) Thread.sleep(pause);
            }
        } else {
            long idle = Long.parseLong(args[3]);
            MessageConsumer consumer = s.createConsumer(q);
            while (true) {
                Message m = consumer.receive(idle);
                if (m == null) break;
                System.out.println("RECV " + ((TextMessage) m).getText());
                m.acknowledge();
            }
            // the node that served us, as its BrokerInfo names it (ha.advertised_host)
            System.out.println("BROKER " + ((ActiveMQConnection) c).getBrokerInfo().getBrokerURL());
            System.out.flush();
        }
        c.close();
        System.out.println("DONE");
    }
}
