# Independent NNpsk0 (AESGCM, SHA256) computation of section 4.2's vector, per the Noise spec.
# With an argument, the vector for a scoped key of that id (its prologue ends "key-id" + the
# id zero-padded to 16 bytes): `python3 scripts/noise-vector.py worker-1`.
import hmac, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization
H=lambda b: hashlib.sha256(b).digest()
def hk(ck, ikm, n):
    t=hmac.new(ck, ikm, hashlib.sha256).digest(); o=[]; prev=b''
    for i in range(1,n+1):
        prev=hmac.new(t, prev+bytes([i]), hashlib.sha256).digest(); o.append(prev)
    return o
def pub(priv): return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
def dh(priv, pubk):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pubk))
name=b"Noise_NNpsk0_25519_AESGCM_SHA256"
h = name + b'\0'*(32-len(name)) if len(name)<=32 else H(name)
ck=h
def mixhash(d):
    global h; h=H(h+d)
key=bytes.fromhex(b"0123456789abcdef".hex())
psk=hmac.new(b"0123456789abcdef", b"taskmill-noise-psk-v4", hashlib.sha256).digest()
prologue=b"taskmill"+b"TMIL"+(4).to_bytes(2,'big')+b'\0'
if len(sys.argv)>1: prologue+=b"key-id"+sys.argv[1].encode().ljust(16,b'\0')
mixhash(prologue)
k=None;n=0
def enc(pt):
    global n,h
    nonce=b'\0'*4+n.to_bytes(8,'big'); c=AESGCM(k).encrypt(nonce, pt, h); n+=1; mixhash(c); return c
# msg1: psk, e
ck,temp=hk(ck,psk,2); mixhash(temp); k=temp; n=0
ce=bytes(range(0x40,0x60)); cep=pub(ce); mixhash(cep)
ck,k=hk(ck,cep,2); n=0   # psk mode: e also MixKey
t=enc(b'')
print(cep.hex()); print(t.hex())
# msg2: e, ee
me=bytes(range(0x60,0x80)); mep=pub(me); mixhash(mep); ck,k=hk(ck,mep,2); n=0
ck,k=hk(ck,dh(me,cep),2); n=0
sealed=enc((1<<20).to_bytes(4,'big')+(5000).to_bytes(4,'big'))
print(mep.hex()); print(sealed.hex())
k1,k2=hk(ck,b'',2)
ping=bytes([0,1,7]); c=AESGCM(k1).encrypt(b'\0'*12, ping, b'')
print((len(c)).to_bytes(4,'big').hex()+c.hex())
c=AESGCM(k2).encrypt(b'\0'*12, bytes([0,1,5]), b'')
print((len(c)).to_bytes(4,'big').hex()+c.hex())
