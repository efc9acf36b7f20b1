import MQTTCodec
import Testing

/// Topic names and filters, with the examples of MQTT 3.1.1 / 5.0 section 4.7.
@Suite("MQTTTopic")
struct TopicTests {
    @Test(
        "valid topic filters",
        arguments: [
            "#", "+", "sport/tennis/player1/#", "sport/#", "sport/tennis/#", "sport/+/player1", "sport/tennis/+", "+/+", "/+",
            "+/tennis/#", "/", "//", "a//b", "$SYS/#", "$SYS/monitor/+", "sport", " ", "ü/€",
        ]
    )
    func validFilter(_ filter: String) {
        #expect(MQTTTopic.isValidFilter(filter))
    }

    @Test(
        "invalid topic filters",
        arguments: ["", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/#/", "++", "a/b+", "##", "+#", "a/+b/c", "#/"]
    )
    func invalidFilter(_ filter: String) {
        #expect(!MQTTTopic.isValidFilter(filter))
    }

    @Test("valid topic names", arguments: ["sport/tennis/player1", "/", "a", "/finance", "$SYS/broker/uptime", "a//b", " ", "ü"])
    func validName(_ name: String) {
        #expect(MQTTTopic.isValidName(name))
    }

    @Test("invalid topic names", arguments: ["", "a/+", "a/#", "+", "#", "sport/tennis#", "a+b"])
    func invalidName(_ name: String) {
        #expect(!MQTTTopic.isValidName(name))
    }

    @Test(
        "shared subscriptions ($share/{ShareName}/{filter}, MQTT 5.0 section 4.8.2)",
        arguments: [
            ("$share/g/a/b", MQTTTopic.SharedFilter.shared(group: "g", filter: "a/b")),
            ("$share/consumer1/sport/tennis/+", .shared(group: "consumer1", filter: "sport/tennis/+")),
            ("$share/g/#", .shared(group: "g", filter: "#")),
            ("$share/g//", .shared(group: "g", filter: "/")),
            ("$share/g", .invalid),
            ("$share/", .invalid),
            ("$share//a", .invalid),
            ("$share/g+/a", .invalid),
            ("$share/#/a", .invalid),
            ("$share/g/", .invalid),
            ("$share/g/a#", .invalid),
            ("$share/g/#/a", .invalid),
        ] as [(String, MQTTTopic.SharedFilter)]
    )
    func parseShared(_ filter: String, _ expected: MQTTTopic.SharedFilter) {
        #expect(MQTTTopic.parseShared(filter) == expected)
    }

    @Test("filters that are not shared subscriptions", arguments: ["a/b", "#", "$SYS/#", "$shared/g/a", "share/g/a", "$SHARE/g/a"])
    func notShared(_ filter: String) {
        #expect(MQTTTopic.parseShared(filter) == nil)
    }

    @Test("the one-pass matcher agrees with the level-by-level reference on every small filter and topic")
    func matcherAgreesWithReference() {
        func combinations(_ alphabet: [String], upTo depth: Int) -> [String] {
            var all: [[String]] = [[]]
            var result: [String] = []
            for _ in 0..<depth {
                all = all.flatMap { prefix in alphabet.map { prefix + [$0] } }
                result += all.map { $0.joined(separator: "/") }
            }
            return result
        }
        let filters = combinations(["a", "bc", "", "+", "#", "$s"], upTo: 4).filter(MQTTTopic.isValidFilter)
        let topics = combinations(["a", "bc", "", "b", "$s", "ab"], upTo: 4).filter(MQTTTopic.isValidName)
        var compared = 0
        for filter in filters {
            for topic in topics {
                let fast = MQTTTopic.matches(filter: filter, topic: topic)
                let reference = MQTTTopic.matchesByLevels(filter: filter, topic: topic)
                if fast != reference {
                    Issue.record("filter '\(filter)' topic '\(topic)': \(fast), reference \(reference)")
                    return
                }
                compared += 1
            }
        }
        #expect(compared > 1_000_000)
    }
}
