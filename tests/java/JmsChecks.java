// What every scenario program of tests/java shares: the broker URL, the "OK name" /
// "FAIL name detail" lines pytest parses (tests/java/jmsrun.py), connections, and the loop that
// runs the scenarios named on the command line. A program extends this class.
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.*;
import javax.jms.*;
import org.apache.activemq.ActiveMQConnectionFactory;

public class JmsChecks {
    static String url;

    static void ok(String name) { System.out.println("OK " + name); }

    static void fail(String name, String detail) {
        System.out.println("FAIL " + name + " " + detail.replace('\n', ' '));
    }

    static void check(String name, boolean cond, String detail) {
        if (cond) ok(name); else fail(name, detail);
    }

    static void eq(String name, Object expected, Object got) {
        boolean same = expected == null ? got == null : expected.equals(got);
        check(name, same, "expected <" + expected + "> got <" + got + ">");
    }

    static ActiveMQConnectionFactory factory(String u) {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(u);
        f.setTrustAllPackages(false);
        f.setTrustedPackages(Arrays.asList("java.lang", "java.util"));
        return f;
    }

    static Connection conn() throws JMSException { return conn(url); }

    static Connection conn(String u) throws JMSException {
        Connection c = factory(u).createConnection();
        c.start();
        return c;
    }

    /**
     * Run {@code sc_<name>} of {@code program} for each argument after the URL, then print DONE
     * and exit. An argument {@code name:arg} calls {@code sc_<name>(String arg)}; a plain
     * {@code name} calls {@code sc_<name>()} (dashes become underscores), or
     * {@code sc_<name>(String name)} where only that exists. An exception fails the scenario.
     */
    static void runScenarios(Class<?> program, String[] args) throws Exception {
        url = args[0];
        for (int i = 1; i < args.length; i++) {
            String[] sc = args[i].split(":", 2);
            String name = "sc_" + sc[0].replace('-', '_');
            try {
                if (sc.length > 1) {
                    program.getDeclaredMethod(name, String.class).invoke(null, sc[1]);
                } else {
                    Method m;
                    try {
                        m = program.getDeclaredMethod(name);
                        m.invoke(null);
                    } catch (NoSuchMethodException e) {
                        program.getDeclaredMethod(name, String.class).invoke(null, sc[0]);
                    }
                }
            } catch (InvocationTargetException e) {
                Throwable t = e.getCause();
                fail(sc[0], "exception " + t);
                t.printStackTrace(System.err);
            }
        }
        System.out.println("DONE");
        System.out.flush();
        System.exit(0);
    }
}
