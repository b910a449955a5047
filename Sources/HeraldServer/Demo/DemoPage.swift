/// The demo chat page served at `GET /`: one self-contained HTML document (no build step, no
/// CDN), edited as `demo.html` beside this file and embedded in the binary at build time (so a
/// copied `herald` binary needs no resource bundle).
enum DemoPage {
    static let html = String(decoding: PackageResources.demo_html, as: UTF8.self)
}
