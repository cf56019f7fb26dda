// The small webapp torpor-bench deploys into Tomcat 10 (Debian) for the CPU-load (1) and Tomcat
// (6) experiments. At startup (load-on-startup) it allocates TORPOR_APP_MIB MiB of heap in 1 MiB
// arrays and fills them with pseudo-random bytes (so swap has real data to write and read back,
// no zero pages); GET ?touch=all reads one byte of every 4 KiB page of that data (the request
// the benchmark times), ?touch=all&rounds=N does that N times (a request with N times the work
// over the same data: the agility benchmark's, bench/run-agility.sh), GET without it answers
// at once.
import jakarta.servlet.ServletException;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.util.SplittableRandom;

public class TorporApp extends HttpServlet {
    private byte[][] data = new byte[0][];
    private double initMs;

    @Override
    public void init() throws ServletException {
        long t0 = System.nanoTime();
        int mib = 64;
        String env = System.getenv("TORPOR_APP_MIB");
        if (env != null && !env.isEmpty()) {
            mib = Integer.parseInt(env.trim());
        }
        byte[][] d = new byte[mib][];
        SplittableRandom r = new SplittableRandom(4242);
        for (int i = 0; i < mib; i++) {
            byte[] b = new byte[1 << 20];
            for (int j = 0; j < b.length; j += 8) {
                long x = r.nextLong();
                for (int k = 0; k < 8; k++) {
                    b[j + k] = (byte) (x >>> (8 * k));
                }
            }
            d[i] = b;
        }
        data = d;
        initMs = (System.nanoTime() - t0) / 1e6;
    }

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws ServletException, IOException {
        long t0 = System.nanoTime();
        long sum = 0;
        long pages = 0;
        if ("all".equals(req.getParameter("touch"))) {
            String r = req.getParameter("rounds");
            int rounds = 1;
            try {
                rounds = r == null ? 1 : Math.max(1, Integer.parseInt(r.trim()));
            } catch (NumberFormatException e) {
                resp.sendError(HttpServletResponse.SC_BAD_REQUEST, "rounds: not a number");
                return;
            }
            for (int i = 0; i < rounds; i++) {
                for (byte[] b : data) {
                    for (int j = 0; j < b.length; j += 4096) {
                        sum += b[j];
                        pages++;
                    }
                }
            }
        }
        resp.setContentType("text/plain");
        resp.getWriter().printf("OK mib=%d pages=%d sum=%d init_ms=%.1f request_ms=%.3f%n", data.length, pages, sum, initMs, (System.nanoTime() - t0) / 1e6);
    }
}
