// HTML report: self-contained (no script, no URL), one mark per bar or cell,
// overlap plots exactly for sharing splits, and, when Debian's chromium is
// installed, a real headless render in which every plot and every mark has a
// non-empty on-screen box.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "eval/report.h"
#include "test_util.h"

using namespace moefy;
namespace fs = std::filesystem;

namespace {

// L layers of E experts over I neurons; `overlap`: expert e also takes the
// first neuron of expert e+1 (inner sharing); `shared`: one shared expert.
ExpertPlan make_plan(int L, int E, int width, bool overlap, bool shared) {
    ExpertPlan p;
    p.num_layers = L;
    p.hidden_size = 8;
    p.intermediate_size = E * width + (shared ? width : 0);
    p.method = overlap ? "gradient" : "random";
    for (int l = 0; l < L; ++l) {
        LayerPlan lp;
        for (int e = 0; e < E; ++e) {
            std::vector<int32_t> ids;
            for (int i = 0; i < width; ++i) ids.push_back(e * width + i);
            if (overlap) ids.push_back(((e + 1) % E) * width);
            std::sort(ids.begin(), ids.end());
            lp.experts.push_back(ids);
        }
        if (shared) {
            std::vector<int32_t> ids;
            for (int i = 0; i < width; ++i) ids.push_back(E * width + i);
            lp.shared.push_back(ids);
        }
        p.layers.push_back(lp);
    }
    return p;
}

ReferenceComparison make_eval(int L, int E, bool oracle) {
    ReferenceComparison c;
    c.dense.tokens = 100;
    c.dense.nll_sum = 250;
    auto quality = [&](double scale) {
        MoEQuality q;
        q.ppl.tokens = 100;
        q.ppl.nll_sum = 300 * scale;
        for (int l = 0; l < L; ++l) {
            LayerQuality lq;
            lq.layer = l;
            lq.err_num = 0.1 * (l + 1) * scale;
            lq.err_den = 1.0;
            lq.tokens = 100;
            for (int e = 0; e < E; ++e) lq.counts.push_back(10 + 5 * ((e + l) % 3));
            q.layers.push_back(lq);
        }
        return q;
    };
    c.moe = quality(1.0);
    if (oracle) c.oracle = quality(0.9);
    return c;
}

int count(const std::string& s, const std::string& what) {
    int n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
}

// The marks inside <svg ... data-plot="name"> ... </svg>.
int marks_in(const std::string& html, const std::string& name) {
    const size_t a = html.find("data-plot=\"" + name + "\"");
    if (a == std::string::npos) return -1;
    const size_t b = html.find("</svg>", a);
    return count(html.substr(a, b - a), "<rect class=\"mark\"");
}

ReportInput input(const ExpertPlan& p, const ReferenceComparison& c) {
    ReportInput in;
    in.title = "test <report> & co";
    in.summary = {{"method", "graph"}, {"experts", "4"}, {"dense ppl", "12.182"}, {"MoE ppl", "20.086"}};
    in.details = {{"model", "models/x"}};
    in.plan = &p;
    in.eval = &c;
    return in;
}

}  // namespace

TEST(Report, EscapesHtml) {
    EXPECT_EQ(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
    EXPECT_EQ(html_escape("plain"), "plain");
}

TEST(Report, SelfContainedWithOneMarkPerValue) {
    const int L = 3, E = 4;
    ExpertPlan p = make_plan(L, E, 5, false, false);
    ReferenceComparison c = make_eval(L, E, true);
    const std::string h = render_report_html(input(p, c));
    // Nothing to fetch and nothing to run.
    EXPECT_EQ(h.find("http://"), std::string::npos);
    EXPECT_EQ(h.find("https://"), std::string::npos);
    EXPECT_EQ(h.find("<script"), std::string::npos);
    EXPECT_EQ(h.find("src="), std::string::npos);
    EXPECT_EQ(h.find("href="), std::string::npos);
    EXPECT_EQ(h.find("@import"), std::string::npos);
    EXPECT_NE(h.find("<title>test &lt;report&gt; &amp; co</title>"), std::string::npos);
    EXPECT_NE(h.find("<td>12.182</td>"), std::string::npos);
    EXPECT_NE(h.find("<th>MoE ppl</th>"), std::string::npos);
    EXPECT_EQ(marks_in(h, "widths"), L * E);
    EXPECT_EQ(marks_in(h, "ffn_error"), 2 * L);
    EXPECT_EQ(marks_in(h, "load"), L * E);
    EXPECT_EQ(marks_in(h, "overlap-0"), -1);  // a partition has no overlap plot
    EXPECT_EQ(count(h, "<svg class=\"plot\""), 3);
    EXPECT_EQ(count(h, "<svg"), count(h, "</svg>"));
    // Bar heights are proportional to the values: layer 2's error bar (0.3) is three times layer 0's (0.1).
    std::regex bar("<rect class=\"mark\" x=\"[0-9.]+\" y=\"[0-9.]+\" width=\"[0-9.]+\" height=\"([0-9.]+)\" fill=\"[^\"]+\"><title>layer (\\d): FFN error [0-9.]+ \\(router\\)");
    std::vector<double> heights(3, 0);
    for (auto it = std::sregex_iterator(h.begin(), h.end(), bar); it != std::sregex_iterator(); ++it)
        heights[size_t(std::stoi((*it)[2]))] = std::stod((*it)[1]);
    ASSERT_GT(heights[0], 0);
    EXPECT_NEAR(heights[2] / heights[0], 3.0, 0.01);
    // The load cv of each layer is printed beside its row.
    EXPECT_NE(h.find(fmt::format("cv {:.2f}", c.moe.layers[0].load_cv())), std::string::npos);
}

TEST(Report, SharingSplitsGetOverlapAndSharedBars) {
    const int L = 2, E = 3;
    ExpertPlan p = make_plan(L, E, 4, true, true);
    ReferenceComparison c = make_eval(L, E, false);
    const std::string h = render_report_html(input(p, c));
    EXPECT_EQ(marks_in(h, "widths"), L * (E + 1));
    EXPECT_EQ(marks_in(h, "ffn_error"), L);  // no oracle series
    EXPECT_EQ(marks_in(h, "overlap-0"), E * E);
    EXPECT_EQ(marks_in(h, "overlap-1"), E * E);
    // experts 0 and 1 share one neuron of 5 + 5 - 1 = 9
    EXPECT_NE(h.find("experts 0 and 1: overlap 0.111"), std::string::npos);
    EXPECT_NE(h.find("layer 1, shared expert 0: 4 neurons"), std::string::npos);
}

TEST(Report, WritesFileAndSkipsAbsentParts) {
    TempDir t;
    ExpertPlan p = make_plan(2, 2, 3, false, false);
    ReportInput in;
    in.title = "only widths";
    in.plan = &p;
    write_report_html(t.path + "/r.html", in);
    const std::string h = read_file(t.path + "/r.html");
    EXPECT_EQ(marks_in(h, "widths"), 4);
    EXPECT_EQ(marks_in(h, "load"), -1);
    EXPECT_THROW(write_report_html(t.path + "/no/such/dir/r.html", in), std::exception);
}

// ---- a real render --------------------------------------------------------------------

namespace {

// Appended to a copy of the report (never to the report itself): measures, after
// layout, every plot's box and each mark's on-screen box and fill colour.
const char* const kProbe = R"(<script>
const out = {};
for (const svg of document.querySelectorAll('svg.plot')) {
  const r = svg.getBoundingClientRect();
  let shown = 0, painted = 0;
  for (const m of svg.querySelectorAll('.mark')) {
    const b = m.getBoundingClientRect();
    if (b.width > 0 && b.height > 0 && b.right > r.left && b.left < r.right) shown++;
    const f = getComputedStyle(m).fill;
    if (f && f !== 'none' && f !== 'rgba(0, 0, 0, 0)') painted++;
  }
  out[svg.dataset.plot] = {w: r.width, h: r.height, shown: shown, painted: painted};
}
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>)";

std::string run_chromium(const std::string& url, const std::string& profile) {
    const std::string cmd =
        "timeout 60 /usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
        "--disable-background-networking --disable-component-update --disable-sync --window-size=1200,3000 "
        "--user-data-dir=" + profile + " --dump-dom " + url + " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
}

}  // namespace

TEST(Report, RendersInHeadlessChromium) {
    if (!fs::exists("/usr/bin/chromium")) GTEST_SKIP() << "/usr/bin/chromium not installed (apt-get install chromium)";
    const int L = 4, E = 6;
    ExpertPlan p = make_plan(L, E, 5, true, false);
    ReferenceComparison c = make_eval(L, E, true);
    TempDir t;
    const std::string page = t.path + "/probe.html";
    std::string html = render_report_html(input(p, c));
    html.insert(html.rfind("</body>"), kProbe);
    std::ofstream(page) << html;
    fs::create_directories(t.path + "/profile");
    const std::string dom = run_chromium("file://" + page, t.path + "/profile");
    const size_t a = dom.find("<pre id=\"probe\">");
    ASSERT_NE(a, std::string::npos) << "chromium produced no probe output:\n" << dom.substr(0, 2000);
    const size_t b = dom.find("</pre>", a);
    const nlohmann::json j = nlohmann::json::parse(dom.substr(a + 16, b - a - 16));
    std::map<std::string, int> expect = {{"widths", L * E}, {"ffn_error", 2 * L}, {"load", L * E}};
    for (int l = 0; l < L; ++l) expect["overlap-" + std::to_string(l)] = E * E;
    ASSERT_EQ(j.size(), expect.size()) << j.dump();
    for (const auto& [name, marks] : expect) {
        ASSERT_TRUE(j.contains(name)) << name << " not rendered: " << j.dump();
        EXPECT_GT(j[name]["w"].get<double>(), 100) << name;
        EXPECT_GT(j[name]["h"].get<double>(), 50) << name;
        EXPECT_EQ(j[name]["shown"].get<int>(), marks) << name;
        EXPECT_EQ(j[name]["painted"].get<int>(), marks) << name;
    }
}
