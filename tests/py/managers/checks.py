# Checks of taskmill-master's Python listener through CPython's own client
# (multiprocessing.managers), one group per argument: exceptions, bounded, join, wrong_key,
# refuse_md5, durable_put, durable_get, hostile. Prints "ok <check>" per check and exits non-zero at the first failure.
# Environment: TASKMILL_PY_ADDR (host:port of --python-listen), TASKMILL_AUTHKEY.
import collections, datetime, decimal, fractions, math, os, pickle, queue, socket, struct
import sys, threading, time
from multiprocessing import connection
from multiprocessing.managers import BaseManager, RemoteError

HOST, PORT = os.environ['TASKMILL_PY_ADDR'].rsplit(':', 1)
ADDR = (HOST, int(PORT))
KEY = os.environ['TASKMILL_AUTHKEY'].encode()


class QueueManager(BaseManager):
    pass


QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
QueueManager.register('get_nothing')


def manager(key=KEY):
    m = QueueManager(address=ADDR, authkey=key)
    m.connect()
    return m


def ok(name):
    print('ok', name, flush=True)


def raises(exc, fn, *args, at_least=0.0, at_most=5.0, contains=None, **kwds):
    start = time.monotonic()
    try:
        fn(*args, **kwds)
    except exc as e:
        took = time.monotonic() - start
        assert type(e) is exc, 'raised %r, not %s' % (e, exc.__name__)
        assert at_least <= took <= at_most, '%s after %.3fs, not within [%s, %s]' % (
            exc.__name__, took, at_least, at_most)
        if contains is not None:
            assert contains in str(e), '%r does not mention %r' % (str(e), contains)
        return e
    raise AssertionError('%s(%r, %r) did not raise %s' % (fn.__name__, args, kwds, exc.__name__))


def items():
    shared = [1]
    looped = []
    looped.append(looped)
    recursive = ([],)
    recursive[0].append(recursive)
    return {
        'recursive tuple': recursive,
        'small int': 42, 'big int': 2 ** 100, 'negative': -(2 ** 70), 'float': 1.5,
        'nan': float('nan'), 'str': 'hello', "the method's name": 'put', 'empty str': '',
        'lone surrogate': '\udc80x', 'bytes': b'\x00\xff', 'bytearray': bytearray(b'ab'),
        'none': None, 'bool': True, 'tuple': ('x', 'x', 1), 'nested': ('x', [1, 2], {'a': None}),
        'shared lists': [shared, shared], 'self-containing list': looped, 'set': {1, 2},
        'frozenset': frozenset({3}), 'datetime': datetime.datetime(2024, 1, 2, 3, 4, 5),
        'decimal': decimal.Decimal('1.10'), 'fraction': fractions.Fraction(1, 3),
        'deque': collections.deque([1], maxlen=5), 'ordered': collections.OrderedDict(a=1),
        'exception': ValueError('x', 1), 'range': range(1, 9, 2), 'queue.Empty': queue.Empty(),
        'big str': 'y' * 100000, 'dict of 40': {str(i): i for i in range(40)},
    }


def same(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, BaseException):
        return type(a) is type(b) and a.args == b.args
    if isinstance(a, collections.deque):
        return a == b and a.maxlen == b.maxlen
    if isinstance(a, tuple) and len(a) == 1 and isinstance(a[0], list) and a[0][0] is a:
        return isinstance(b, tuple) and b[0][0] is b
    if isinstance(a, list) and a and a[0] is a:
        return isinstance(b, list) and b[0] is b
    if isinstance(a, list) and len(a) == 2 and a[0] is a[1]:
        return a == b and b[0] is b[1]
    return type(a) is type(b) and a == b


def exceptions():
    m = manager()
    task = m.get_task_queue()
    while not task.empty():
        task.get_nowait()
    raises(queue.Empty, task.get_nowait, at_most=2)
    raises(queue.Empty, task.get, False)
    raises(queue.Empty, task.get, timeout=0.5, at_least=0.45, at_most=5)
    raises(queue.Empty, task.get, True, 0.2, at_least=0.15, at_most=5)
    ok('Empty at once and after the timeout')
    task.put(1)
    raises(ValueError, task.get, timeout=-1, contains="'timeout' must be a non-negative number")
    assert task.qsize() == 1 and not task.empty() and not task.full()
    assert task.get_nowait() == 1
    ok('ValueError for a negative timeout even with an item queued')
    raises(TypeError, task.get, True, 1, 2, contains='Queue.get() takes from 1 to 3 positional arguments but 4 were given')
    raises(TypeError, task._callmethod, 'get', (), {'wait': 1}, contains="unexpected keyword argument 'wait'")
    raises(TypeError, task._callmethod, 'put', (), {}, contains="missing 1 required positional argument: 'item'")
    raises(TypeError, task.get, timeout='soon', contains="'<' not supported")
    raises(OverflowError, task.get, timeout=float('inf'))
    ok("TypeError and OverflowError as Python's")
    for name, value in items().items():
        task.put(value)
        back = task.get(timeout=5)
        assert same(value, back), '%s: put %r, got %r' % (name, value, back)
    ok('items of %d kinds come back as they were put' % len(items()))
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        # An item pickled with another protocol, put by a raw request on the method channel.
        c = connection.Client(ADDR, authkey=KEY)
        c.send((None, 'accept_connection', ('raw',), {}))
        assert c.recv() == ('#RETURN', None)
        ident = task._token.id
        c.send_bytes(pickle.dumps((ident, 'put', (('p', proto, [2 ** 80]),), {}), protocol=proto))
        assert c.recv() == ('#RETURN', None)
        c.send_bytes(pickle.dumps((ident, 'get', (), {'timeout': 5}), protocol=proto))
        assert c.recv() == ('#RETURN', ('p', proto, [2 ** 80])), proto
        c.close()
    ok('requests of pickle protocols 2 to %d' % pickle.HIGHEST_PROTOCOL)
    e = raises(RemoteError, task._callmethod, 'nope')
    assert 'AttributeError' in str(e) and 'not in exposed' in str(e), str(e)
    assert 'taskmill queue' in task._callmethod('__repr__')
    e = raises(RemoteError, m.get_nothing)
    assert 'KeyError' in str(e), str(e)
    c = connection.Client(ADDR, authkey=KEY)
    c.send((None, 'shutdown', (), {}))
    kind, text = c.recv()
    assert kind == '#TRACEBACK' and 'shutdown is disabled' in text, (kind, text)
    ok('unknown methods and names, and shutdown, get the errors CPython gives')
    # A get blocked without a timeout whose client goes away takes nothing (CPython's server
    # would take the next item and lose it on the failed send).
    c = connection.Client(ADDR, authkey=KEY)
    c.send((None, 'accept_connection', ('gone',), {}))
    assert c.recv() == ('#RETURN', None)
    c.send((task._token.id, 'get', (), {}))
    time.sleep(0.3)
    c.close()
    time.sleep(0.3)
    task.put('after')
    assert task.get(timeout=5) == 'after'
    ok('a blocked get whose client has gone takes nothing')


def bounded():
    # The master runs with --queue-capacity 2.
    task = manager().get_task_queue()
    task.put('a')
    task.put('b')
    assert task.full() and task.qsize() == 2
    raises(queue.Full, task.put_nowait, 'c', at_most=2)
    raises(queue.Full, task.put, 'c', False)
    raises(queue.Full, task.put, 'c', timeout=0.5, at_least=0.45, at_most=5)
    raises(ValueError, task.put, 'c', timeout=-1)
    ok('Full at once and after the timeout')
    # A put waiting for room gets it when another connection takes an item.
    threading.Timer(0.3, lambda: manager().get_task_queue().get()).start()
    start = time.monotonic()
    task.put('c', timeout=10)
    assert 0.2 <= time.monotonic() - start < 10
    assert [task.get(), task.get()] == ['b', 'c']
    ok('a waiting put gets the room a get frees')


def join():
    result = manager().get_result_queue()
    while not result.empty():
        result.get_nowait()
    for i in range(3):
        result.put(i)
    done = threading.Event()

    def joiner():
        manager().get_result_queue().join()
        done.set()

    threading.Thread(target=joiner, daemon=True).start()
    for i in range(3):
        assert result.get(timeout=5) == i
        time.sleep(0.1)
        assert not done.is_set(), 'join returned before every task_done'
        result.task_done()
    assert done.wait(10), 'join did not return after the last task_done'
    raises(ValueError, result.task_done, contains='task_done() called too many times')
    ok('task_done and join')


def wrong_key():
    from multiprocessing import AuthenticationError
    raises(AuthenticationError, manager, b'not-the-key-of-this-master', at_most=10)
    ok('a wrong key raises AuthenticationError')


def refuse_md5():
    # The master runs with --python-refuse-md5: 3.11 and older answer with HMAC-MD5 and are
    # refused; 3.12+ answer with HMAC-SHA256 and get in.
    from multiprocessing import AuthenticationError
    if sys.version_info < (3, 12):
        raises(AuthenticationError, manager, at_most=10)
        ok('an HMAC-MD5 client is refused')
    else:
        manager().get_task_queue().qsize()
        ok('an HMAC-SHA256 client gets in')


SURVIVORS = [('survives', 1), {'a': [1, 2]}, 'put', 2 ** 80]


def durable_put():
    task = manager().get_task_queue()
    for item in SURVIVORS:
        task.put(item)
    ok('puts acknowledged')


def durable_get():
    # After the master was killed and restarted on its data directory.
    task = manager().get_task_queue()
    got = [task.get(timeout=5) for _ in SURVIVORS]
    assert got == SURVIVORS, got
    raises(queue.Empty, task.get_nowait)
    ok('every acknowledged put survived the restart')


def hostile():
    # Before authentication: a huge length, the -1 escape, garbage: closed, nothing parsed.
    for header in [struct.pack('!i', 0x7fffffff), struct.pack('!iQ', -1, 1 << 40), b'\x00\x00\x01\x00']:
        s = socket.create_connection(ADDR, timeout=10)
        s.recv(4)
        s.recv(59)
        s.sendall(header + b'x' * 300)
        s.settimeout(10)
        try:
            rest = s.recv(100)
        except ConnectionResetError:
            rest = b''
        assert rest in (b'', b'\x00\x00\x00\x09#FAILURE#'), rest
        s.close()
    ok('oversized, escaped and garbage handshakes are closed')
    # After authentication: garbage pickles are answered, the connection goes on.
    c = connection.Client(ADDR, authkey=KEY)
    c.send((None, 'accept_connection', ('hostile',), {}))
    assert c.recv() == ('#RETURN', None)
    for junk in [b'', b'\x80\x04', b'garbage', b'\x80\x04\x95' + b'\xff' * 8, b'\x80\x05(' * 5000,
                 pickle.dumps(('q0', 'put', (1,), {}))[:-1], b'\x80\x04Q.', b'\x80\x04cos\nsystem\n.']:
        c.send_bytes(junk)
        kind, text = c.recv()
        assert kind == '#TRACEBACK', (junk, kind, text)
    ok('garbage pickles get a traceback and the channel goes on')
    # A memo bomb: 2^28 leaves if expanded, a few hundred bytes as sent.
    body = b']\x94\x30' + b''.join(b'(h%ch%cl\x94\x30' % (i, i) for i in range(28)) + b'h\x1c'
    ident = manager().get_task_queue()._token.id
    request = b'\x80\x04(\x8c' + bytes([len(ident)]) + ident.encode() + b'\x8c\x03put' + body + b'\x85}t.'
    c.send_bytes(request)
    assert c.recv() == ('#RETURN', None)
    c.send(('q0', 'get', (), {'timeout': 5}))
    kind, bomb = c.recv()
    assert kind == '#RETURN' and bomb[0] is bomb[1], kind
    ok('a pickle bomb is stored and handed back as sent, never expanded')
    c.close()
    # After authentication, a length past the master's frame cap closes the connection
    # without the body being read or allocated.
    c = connection.Client(ADDR, authkey=KEY)
    c.send((None, 'accept_connection', ('huge',), {}))
    assert c.recv() == ('#RETURN', None)
    c._send(struct.pack('!i', 0x7fffffff))
    try:
        c.recv()
        raise AssertionError('an oversized frame was answered')
    except (EOFError, ConnectionResetError):
        pass
    ok('a frame over the cap after authentication closes the connection')


for group in sys.argv[1:]:
    globals()[group]()
