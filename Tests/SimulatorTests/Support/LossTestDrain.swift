extension Duration {
    /// The drain of the simulator tests that expect no loss. An upper bound, not a wait: the drain ends as soon
    /// as every expected delivery and acknowledgement has arrived. Generous, so that on a loaded machine
    /// (deliveries seconds behind the publishers) a late message is not counted as lost.
    static let lossTestDrain = Duration.seconds(40)
}
