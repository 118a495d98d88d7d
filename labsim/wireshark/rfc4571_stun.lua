-- rfc4571_stun.lua: RFC 4571-framed STUN over TCP, for Wireshark and tshark (from labsim).
--
-- What it is for (Cisco TechNote 212580; labsim's docs/wireshark.md). The ICE connectivity
-- checks of an ICE-TCP media path are STUN messages, each one preceded by a 16-bit length
-- (RFC 4571 §2, which RFC 6544 requires for STUN). In a Skype for Business screen share into
-- Cisco Meeting Server through Expressway-E they cross the TURN server's TCP relay (RFC 6062):
-- on the peer leg (the Skype side <-> the relayed port) and on the TURN data connection (CMS
-- <-> 3478) once ConnectionBind has succeeded. Wireshark's STUN dissector hands that data
-- connection to the "data" dissector from the frame after the ConnectionBind Success Response
-- (RFC 6062 §5.3: from then on the connection is a raw pipe), so the checks show as plain TCP:
-- the TechNote's `00 6c 00 01 00 58 21 12 a4 42 ...` (length 108, Binding Request, Message
-- Length 88, the magic cookie).
--
-- What it does: it finds each framed STUN message and hands it, without its 2-byte length, to
-- Wireshark's own STUN dissector, so the rows read `Binding Request user: ...` and `Binding
-- Success Response XOR-MAPPED-ADDRESS: ...` and match the display filter `stun`; the framing
-- is a tree item of its own ("RFC 4571-framed STUN", filter rfc4571stun, field
-- rfc4571stun.length). Two ways in, one test:
--   * a heuristic dissector on TCP, for the connections TCP offers to heuristics (the relayed
--     port's leg, any port no dissector owns). It accepts a segment that starts with a framed
--     STUN header, takes the connection over and follows the framing with TCP's reassembly
--     (dissect_tcp_pdus): a message split across segments, several messages in one segment;
--   * a post-dissector for TCP payload another dissector left as "data": the TURN data
--     connection, which TCP no longer offers to heuristics once STUN has handed it to "data".
--     The same test where a segment starts, then the framing followed from segment to
--     segment and reassembled here.
-- The test (framed_stun_at): the length prefix equals 20 + the STUN Message Length, the
-- Message Length is a multiple of 4, the type's two top bits are 0, and the magic cookie
-- 0x2112A442 sits at offset 6 (offset 4 of the STUN header; RFC 5389 §6). Plain STUN (a TURN
-- control connection, the ConnectionBind exchange that opens a data connection) has its cookie
-- at offset 4 and fails it; so do SIP and other TCP data.
--
-- Load it: tshark -X lua_script:/path/to/rfc4571_stun.lua -r FILE -Y stun
-- or copy it into the personal plugins folder (~/.local/lib/wireshark/plugins/) for Wireshark.
-- `labsim wireshark-plugin` prints where it is. Preference: rfc4571stun.enabled (TRUE).
--
-- Valid on Lua 5.1 to 5.4 (Wireshark 3.x and 4.x): no bitwise operators, no integer division.

local COOKIE = 0x2112A442 -- RFC 5389 §6: the magic cookie, bytes 4-7 of every STUN header
local STUN_HEADER = 20 -- RFC 5389 §6: type 2, Message Length 2, cookie 4, transaction id 12
local PREFIX = 2 -- RFC 4571 §2: a 16-bit length in network byte order, not counting itself
local TEST_BYTES = PREFIX + 8 -- what the test reads: the prefix, the type, the length, the cookie

local rfc4571 = Proto("rfc4571stun", "RFC 4571-framed STUN (labsim)")
local f_length = ProtoField.uint16("rfc4571stun.length", "Frame Length", base.DEC, nil, nil,
    "RFC 4571 §2: the length of the packet that follows, not counting these 2 bytes")
local f_payload = ProtoField.string("rfc4571stun.payload", "Payload",
    "What the frame carries, by its first byte (RFC 7983 §7): STUN, RTP/RTCP or other")
local f_reassembled = ProtoField.bool("rfc4571stun.reassembled", "Reassembled", base.NONE,
    nil, nil, "The frame began in an earlier TCP segment of a connection left as data")
rfc4571.fields = { f_length, f_payload, f_reassembled }
rfc4571.prefs.enabled = Pref.bool("Decode RFC 4571-framed STUN", true,
    "Find RFC 4571-framed STUN messages (ICE-TCP checks) in TCP and decode them as STUN")

-- The post-dissector is a Proto of its own: the framing's dissector stays the one a TCP
-- connection the heuristic took over calls.
local pipe = Proto("rfc4571stun_data", "RFC 4571-framed STUN in TCP data (labsim)")

-- Wireshark's STUN dissector for one whole message in a buffer, with no framing prefix looked
-- for: "stun-udp" in Wireshark 3.x and 4.x, "stun" where a version registers that name.
local function find_stun()
    for _, name in ipairs({ "stun-udp", "stun" }) do
        local ok, handle = pcall(Dissector.get, name)
        if ok and handle ~= nil then
            return handle
        end
    end
    return nil
end
local stun = find_stun()
local data = Dissector.get("data")

-- The test, on `read(at, n)`: the unsigned big-endian number of n bytes at offset `at`.
local function framed_stun_at(read, at)
    local message_length = read(at + 4, 2)
    return read(at + 2, 1) < 0x40 -- RFC 5389 §6: a STUN type's two top bits are 0
        and read(at + 6, 4) == COOKIE -- RFC 5389 §6, 2 bytes later for RFC 4571's prefix
        and message_length % 4 == 0 -- RFC 5389 §6: attributes are padded to 4 bytes
        and read(at, 2) == STUN_HEADER + message_length -- RFC 4571 §2: it counts the message
end

local function tvb_reader(tvb)
    return function(at, n)
        return tvb(at, n):uint()
    end
end

local function string_reader(s)
    return function(at, n)
        local value = 0
        for i = at + 1, at + n do
            value = value * 256 + s:byte(i)
        end
        return value
    end
end

-- RFC 7983 §7 (RFC 5764 §5.1.2 before it): the first byte tells STUN (0-3) from RTP/RTCP
-- (128-191) on a path that carries both; ICE-TCP media follows its checks on the connection.
local function payload_kind(packet, length)
    local first = packet(0, 1):uint()
    if first < 4 and length >= STUN_HEADER and packet(4, 4):uint() == COOKIE then
        return "STUN"
    elseif first >= 128 and first < 192 then
        return "RTP/RTCP"
    end
    return "other"
end

-- One whole RFC 4571 frame (prefix and packet) in `frame`: the framing's tree item, then the
-- packet, STUN to Wireshark's STUN dissector and anything else to "data".
local function dissect_frame(frame, pinfo, tree, reassembled)
    local length = frame(0, PREFIX):uint()
    local item = tree:add(rfc4571, frame(0, PREFIX + length))
    item:add(f_length, frame(0, PREFIX))
    if reassembled then
        item:add(f_reassembled, true):set_generated()
    end
    if length == 0 then
        item:append_text(", empty")
        return
    end
    local packet = frame(PREFIX, length):tvb()
    local kind = payload_kind(packet, length)
    item:add(f_payload, frame(PREFIX, length), kind)
    item:append_text(string.format(", %s, %d bytes", kind, length))
    if kind ~= "STUN" or stun == nil then
        data:call(packet, pinfo, tree)
        return
    end
    -- Several messages in one segment: each one's Info after the one before, not over it.
    if pinfo.private.rfc4571stun ~= nil then
        pinfo.cols.info:append(" | ")
        pinfo.cols.info:fence()
    end
    pinfo.private.rfc4571stun = "1"
    stun:call(packet, pinfo, tree)
    pinfo.cols.info:fence()
end

-- Way in 1: TCP's heuristic, then the connection's own dissector with TCP's reassembly.

-- Frames this way dissected: the post-dissector leaves them alone.
local taken = {}

local function frame_length(tvb, pinfo, offset)
    return PREFIX + tvb(offset, PREFIX):uint()
end

local function dissect_pdu(tvb, pinfo, tree)
    dissect_frame(tvb, pinfo, tree, false)
    return tvb:len()
end

-- TCP calls it for every segment of a connection the heuristic took over (its conversation's
-- dissector), and reassembles what dissect_tcp_pdus asks for.
local function dissect_connection(tvb, pinfo, tree)
    if not rfc4571.prefs.enabled then
        return 0 -- a connection taken over before the switch was turned off goes back to TCP
    end
    taken[pinfo.number] = true
    dissect_tcp_pdus(tvb, tree, PREFIX, frame_length, dissect_pdu, true)
    return tvb:len()
end
rfc4571.dissector = dissect_connection

local function heuristic(tvb, pinfo, tree)
    if not rfc4571.prefs.enabled or tvb:len() < TEST_BYTES then
        return false
    end
    if not framed_stun_at(tvb_reader(tvb), 0) then
        return false
    end
    -- Take the connection over: its later segments may begin inside a frame, or with a frame
    -- of media rather than STUN, which the test alone would not recognise.
    pinfo.conversation = rfc4571
    dissect_connection(tvb, pinfo, tree)
    return true
end
rfc4571:register_heuristic("tcp", heuristic)

-- Way in 2: the post-dissector, for TCP payload left as data.

local f_tcp_payload = Field.new("tcp.payload")
local f_tcp_stream = Field.new("tcp.stream")
local f_tcp_seq = Field.new("tcp.seq")
local f_data = Field.new("data")
local f_stun = Field.new("stun")

-- Per direction of a connection: the sequence number of its next byte, the bytes of a frame
-- not complete yet, and whether the bytes followed are in step with the framing.
local directions = {}
-- Per frame number, once followed: the frames it completes, each { offset, length } in the
-- capture's bytes, or { bytes } (a Lua string) when it began in an earlier segment.
local pieces_of = {}

function rfc4571.init()
    taken = {}
    directions = {}
    pieces_of = {}
end

-- Add one segment's payload to its direction and cut out the frames it completes. Segments
-- must come in order (the first pass, or tshark's second); a gap starts the direction again
-- at the next segment that begins with a framed STUN message.
local function follow(key, seq, payload, payload_offset)
    local state = directions[key]
    if state == nil then
        state = { next_seq = nil, pending = "", in_step = false }
        directions[key] = state
    end
    if state.next_seq ~= nil and seq < state.next_seq then
        -- Bytes already followed, sent again: keep only what is new.
        local again = state.next_seq - seq
        if again >= #payload then
            return {}
        end
        payload, payload_offset, seq = payload:sub(again + 1), payload_offset + again, seq + again
    elseif state.next_seq ~= nil and seq > state.next_seq then
        state.pending, state.in_step = "", false -- bytes missing
    end
    state.next_seq = seq + #payload
    local carried = #state.pending -- bytes of earlier segments at the buffer's start
    local buffer = state.pending .. payload
    if not state.in_step then
        if #buffer < TEST_BYTES then
            state.pending = buffer -- too short to tell yet
            return {}
        end
        if not framed_stun_at(string_reader(buffer), 0) then
            state.pending = ""
            return {}
        end
        state.in_step = true
    end
    local pieces = {}
    local at = 0 -- 0-based offset in buffer
    while #buffer - at >= PREFIX do
        local size = PREFIX + string_reader(buffer)(at, PREFIX)
        if #buffer - at < size then
            break
        end
        if at >= carried then
            pieces[#pieces + 1] = { offset = payload_offset + at - carried, length = size }
        else
            pieces[#pieces + 1] = { bytes = buffer:sub(at + 1, at + size) }
        end
        at = at + size
    end
    state.pending = buffer:sub(at + 1)
    return pieces
end

function pipe.dissector(tvb, pinfo, tree)
    if not rfc4571.prefs.enabled or taken[pinfo.number] then
        return
    end
    if pieces_of[pinfo.number] == nil then
        -- Fields are there when the pass builds a tree (tshark's only pass, or its second
        -- with -2; Wireshark's first); without one, wait for a pass that has it.
        local payload, seq, stream = f_tcp_payload(), f_tcp_seq(), f_tcp_stream()
        if payload == nil or seq == nil or stream == nil or f_data() == nil or f_stun() ~= nil then
            return
        end
        local key = string.format("%d %s:%d", stream.value, tostring(pinfo.src), pinfo.src_port)
        pieces_of[pinfo.number] = follow(key, seq.value, payload.range:raw(), payload.offset)
    end
    local pieces = pieces_of[pinfo.number]
    if #pieces == 0 then
        return
    end
    pinfo.cols.info:clear_fence()
    pinfo.cols.info:set("")
    for _, piece in ipairs(pieces) do
        if piece.bytes ~= nil then
            local bytes = ByteArray.new(piece.bytes, true)
            dissect_frame(bytes:tvb("Reassembled RFC 4571 frame"), pinfo, tree, true)
        else
            dissect_frame(tvb(piece.offset, piece.length):tvb(), pinfo, tree, false)
        end
    end
end
register_postdissector(pipe)
