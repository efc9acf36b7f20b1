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
}
