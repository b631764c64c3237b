// Run by scripts/dnnl-primitive-vs-sgemm.sh: oneDNN sgemm against its matmul primitive (weights
// packed once, then with bias + swish fused) on the base tower's linear shapes, one thread.
#include <dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
#include <omp.h>
using namespace dnnl;
using tag = memory::format_tag; using dt = memory::data_type;
double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
int main(){
  omp_set_num_threads(1);
  engine eng(engine::kind::cpu,0); stream s(eng);
  int shapes[][3]={{577,768,3072},{577,3072,768},{577,768,2304},{577,768,768},{577,768,1536},{577,1536,768}};
  for(auto&sh:shapes){int M=sh[0],K=sh[1],N=sh[2];
    std::vector<float> A(M*K),B(K*N),C(M*N),bias(N);
    for(size_t i=0;i<A.size();i++)A[i]=(i%7)*0.1f; for(size_t i=0;i<B.size();i++)B[i]=(i%5)*0.01f;
    double fl=2.0*M*N*K;
    auto best=[&](auto f){f(); double b=1e9; for(int r=0;r<7;r++){double t=now(); f(); b=std::min(b,now()-t);} return b;};
    double ts=best([&]{dnnl_sgemm('N','N',M,N,K,1.f,A.data(),K,B.data(),N,0.f,C.data(),N);});
    // matmul primitive with packed weights
    memory::desc a_md({M,K},dt::f32,tag::ab), b_any({K,N},dt::f32,tag::any), c_md({M,N},dt::f32,tag::ab), bias_md({1,N},dt::f32,tag::ab);
    post_ops po; po.append_eltwise(1.f, algorithm::eltwise_swish, 1.702f, 0.f);
    primitive_attr attr; attr.set_post_ops(po);
    auto pd = matmul::primitive_desc(matmul::desc(a_md,b_any,bias_md,c_md),attr,eng);
    auto pd0 = matmul::primitive_desc(matmul::desc(a_md,b_any,c_md),eng);
    memory bsrc({{K,N},dt::f32,tag::ab},eng,B.data());
    memory bw(pd.weights_desc(),eng); reorder(bsrc,bw).execute(s,bsrc,bw);
    memory bw0(pd0.weights_desc(),eng); reorder(bsrc,bw0).execute(s,bsrc,bw0);
    memory am(a_md,eng,A.data()), cm(c_md,eng,C.data()), bm(bias_md,eng,bias.data());
    matmul mm(pd), mm0(pd0);
    double tp=best([&]{mm.execute(s,{{DNNL_ARG_SRC,am},{DNNL_ARG_WEIGHTS,bw},{DNNL_ARG_BIAS,bm},{DNNL_ARG_DST,cm}}); s.wait();});
    double tp0=best([&]{mm0.execute(s,{{DNNL_ARG_SRC,am},{DNNL_ARG_WEIGHTS,bw0},{DNNL_ARG_DST,cm}}); s.wait();});
    printf("%dx%dx%d sgemm %.1f  matmul(packed) %.1f  matmul+bias+swish %.1f GFLOP/s  impl %s\n",M,K,N,fl/ts/1e9,fl/tp0/1e9,fl/tp/1e9,pd.impl_info_str());
  }
}
