import GatewayConfig
import Testing

/// `admin.dashboard` and `admin.dashboard_sessions`: defaults, both syntaxes, and the range check.
@Suite("Admin dashboard configuration")
struct AdminDashboardConfigTests {
    @Test("the dashboard is on by default with 10 sessions")
    func defaults() throws {
        let admin = try ConfigLoader.decode("admin:\n  port: 9000\n", path: "a.yaml").admin
        #expect(admin.dashboard && admin.dashboardSessions == 10)
    }

    @Test("YAML and JSON set both keys")
    func values() throws {
        let yaml = try ConfigLoader.decode("admin:\n  dashboard: false\n  dashboard_sessions: 3\n", path: "a.yaml").admin
        let json = try ConfigLoader.decode(#"{"admin": {"dashboard": false, "dashboard_sessions": 3}}"#, path: "a.json").admin
        #expect(yaml == json && !yaml.dashboard && yaml.dashboardSessions == 3)
    }

    @Test("bad values name the key", arguments: [
        ("admin:\n  dashboard_sessions: 0\n", "admin.dashboard_sessions", "not from 1 to 1000"),
        ("admin:\n  dashboard_sessions: 1001\n", "admin.dashboard_sessions", "not from 1 to 1000"),
        ("admin:\n  dashboard: maybe\n", "admin.dashboard", "true or false"),
        ("admin:\n  dashbord: true\n", "admin.dashbord", "unknown key"),
    ])
    func rejected(text: String, key: String, reason: String) {
        do {
            _ = try ConfigLoader.decode(text, path: "bad.yaml")
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.key == key)
            #expect(error.message.contains(reason), "message: \(error.message)")
        }
    }
}
