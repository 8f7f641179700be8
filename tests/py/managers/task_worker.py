# The "distributed process" tutorial's worker (ORIGIN.md), unchanged but for the two lines
# marked below that say where the master is and what its key is: here, taskmill-master's
# --python-listen address and the key from TASKMILL_AUTHKEY.
import time, sys, queue
from multiprocessing.managers import BaseManager

# 创建类似的QueueManager:
class QueueManager(BaseManager):
    pass

# 由于这个QueueManager只从网络上获取Queue，所以注册时只提供名字:
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')

# 连接到服务器，也就是运行task_master.py的机器:
import os; host, port = os.environ['TASKMILL_PY_ADDR'].rsplit(':', 1)  # changed: address
server_addr = host
print('Connect to server %s...' % server_addr)
# 端口和验证码注意保持与task_master.py设置的完全一致:
m = QueueManager(address=(server_addr, int(port)), authkey=os.environ['TASKMILL_AUTHKEY'].encode())  # changed: address, key
# 从网络连接:
m.connect()
# 获取Queue的对象:
task = m.get_task_queue()
result = m.get_result_queue()
# 从task队列取任务,并把结果写入result队列:
for i in range(10):
    try:
        n = task.get(timeout=1)
        print('run task %d * %d...' % (n, n))
        r = '%d * %d = %d' % (n, n, n*n)
        time.sleep(1)
        result.put(r)
    except queue.Empty:
        print('task queue is empty.')
# 处理结束:
print('worker exit.')
