import Testing
@testable import TraceCore

/// tracefs `format` files and syscall argument types, as the agent reads them.
@Suite("Target schemas")
struct TargetSchemaTests {
    static let format = """
        name: sample
        ID: 1
        format:
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

        \tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
        \tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
        \tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
        \tfield:__data_loc char[] filename;\toffset:40;\tsize:4;\tsigned:0;
        \tfield:const char * name;\toffset:48;\tsize:8;\tsigned:0;
        \tfield:__rel_loc char[] rel;\toffset:56;\tsize:4;\tsigned:0;
        \tfield:u32 ids[4];\toffset:60;\tsize:16;\tsigned:0;

        print fmt: "prev_comm=%s", REC->prev_comm
        """

    @Test("Fields of a format: numbers, char arrays, __data_loc strings; pointers, __rel_loc and other arrays refused")
    func fields() {
        let fields = Dictionary(uniqueKeysWithValues: TargetSchemaReader.parseFormat(Self.format).map { ($0.name, $0) })
        #expect(fields["common_type"] != nil)  // the caller drops common_ fields
        #expect(fields["prev_comm"]?.shape == .chars(16) && fields["prev_comm"]?.offset == 8)
        #expect(fields["prev_pid"]?.shape == .integer(size: 4, signed: true))
        #expect(fields["prev_state"]?.shape == .integer(size: 8, signed: true) && fields["prev_state"]?.offset == 32)
        #expect(fields["filename"]?.shape == .dataLocation && fields["filename"]?.offset == 40)
        if case .unreadable(let why)? = fields["name"]?.shape { #expect(why.contains("kernel pointer")) } else { Issue.record("name: \(String(describing: fields["name"]))") }
        if case .unreadable? = fields["rel"]?.shape {} else { Issue.record("rel: \(String(describing: fields["rel"]))") }
        if case .unreadable? = fields["ids"]?.shape {} else { Issue.record("ids: \(String(describing: fields["ids"]))") }
    }

    @Test("Syscall argument widths and signedness come from the C type (the format's size is always 8)",
          arguments: [("unsigned int", 4, false), ("int", 4, true), ("size_t", 8, false), ("loff_t", 8, true), ("umode_t", 2, false),
                      ("unsigned long", 8, false), ("char *", 8, false), ("pid_t", 4, true)] as [(String, Int, Bool)])
    func syscallArguments(type: String, size: Int, signed: Bool) {
        #expect(TargetSchemaReader.syscallArgumentShape(type) == .integer(size: size, signed: signed))
    }

    @Test("const char * syscall arguments are user strings")
    func strings() {
        #expect(TargetSchemaReader.syscallArgumentShape("const char *") == .string(user: true))
    }
}
