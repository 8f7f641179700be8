# The tutorial's master (ORIGIN.md) as a client of taskmill-master: the queues live in the
# taskmill master, so where the tutorial registers callables and calls start() and
# shutdown(), this script registers the names and calls connect(); the puts, the gets and
# their timeouts are the tutorial's. Marked lines differ. Argument: how many tasks (default 10).
import random, time, queue, sys, os
from multiprocessing.managers import BaseManager

# 从BaseManager继承的QueueManager:
class QueueManager(BaseManager):
    pass

# 把两个Queue都注册到网络上, callable参数关联了Queue对象:
QueueManager.register('get_task_queue')  # changed: the queues are the master's
QueueManager.register('get_result_queue')  # changed
# 绑定端口5000, 设置验证码'abc':
host, port = os.environ['TASKMILL_PY_ADDR'].rsplit(':', 1)  # changed: address
manager = QueueManager(address=(host, int(port)), authkey=os.environ['TASKMILL_AUTHKEY'].encode())  # changed: key
# 启动Queue:
manager.connect()  # changed: connect to taskmill-master instead of start()
# 获得通过网络访问的Queue对象:
task = manager.get_task_queue()
result = manager.get_result_queue()
count = int(sys.argv[1]) if len(sys.argv) > 1 else 10  # changed: how many
# 放几个任务进去:
for i in range(count):
    n = random.randint(0, 10000)
    print('Put task %d...' % n)
    task.put(n)
# 从result队列读取结果:
print('Try get results...')
for i in range(count):
    r = result.get(timeout=10)
    print('Result: %s' % r)
# 关闭:
print('master exit.')
