import Synchronization

/// Coalesces concurrent calls with the same key: the first caller runs the operation, callers that
/// arrive while it runs wait for its result instead of running it again.
///
/// A burst of 5,000 CONNECTs from 20 device accounts thus makes 20 user look-ups and 20 password
/// verifications, not 5,000 of each. Nothing is remembered after the operation finishes (caching is
/// the caller's business); an error reaches every caller of that flight.
final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private enum Outcome: Sendable {
        case lead
        case finished(Value)
    }

    private let flights = Mutex<[Key: [CheckedContinuation<Outcome, any Error>]]>([:])

    init() {}

    /// Flights running now.
    var count: Int { flights.withLock { $0.count } }

    /// Runs `operation` for `key`, or waits for the run already in progress.
    func run(_ key: Key, _ operation: () async throws -> Value) async throws -> Value {
        // Leader or follower is decided under the lock in one step, so a follower never joins a flight
        // that has just ended.
        let outcome = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Outcome, any Error>) in
            let leads = flights.withLock { flights -> Bool in
                if flights[key] != nil {
                    flights[key]!.append(continuation)
                    return false
                }
                flights[key] = []
                return true
            }
            if leads { continuation.resume(returning: .lead) }
        }
        switch outcome {
        case .finished(let value):
            return value
        case .lead:
            let result: Result<Value, any Error>
            do {
                result = .success(try await operation())
            } catch {
                result = .failure(error)
            }
            let followers = flights.withLock { $0.removeValue(forKey: key) ?? [] }
            for follower in followers {
                follower.resume(with: result.map { .finished($0) })
            }
            return try result.get()
        }
    }
}
