/// The namespace of the stack symbolization suites (`swift test --filter Stacks` runs them).
enum StacksTests {}
